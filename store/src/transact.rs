//! The read, decide, commit loop of a guarded change, written once for every command
//! that changes resources after checking them against what is stored (apply, delete,
//! the group commands, node registration, a sync pass).
//!
//! A step reads what it needs, decides, and returns the change guarded by the revision
//! it read at (or that there is nothing to do). When the guard fails, what the step
//! decided was decided against a state that is gone, so the store runs the step again
//! on a fresh read, a bounded number of times.

use calico_schema::{Kind, Resource};
use tracing::debug;

use crate::{Outcome, Scope, Store, StoreError, WriteMode};

/// How many times a step runs before [`Store::transact`] gives up on a store that keeps
/// changing under it. Each failed attempt means another writer made progress.
pub const TRANSACT_ATTEMPTS: u32 = 5;

/// One transaction's worth of resource changes, as [`Store::commit`] takes them.
#[derive(Debug, Clone)]
pub struct Changes {
    pub puts: Vec<Resource>,
    /// (kind, name, optional resourceVersion precondition).
    pub deletes: Vec<(Kind, String, Option<String>)>,
    /// Applies to every put.
    pub mode: WriteMode,
    /// The revision the step read at: the commit is `Stale` if any resource changed since.
    pub guard: Option<i64>,
    /// Run every check, write nothing.
    pub dry_run: bool,
    /// When the step read only part of resources/ ([`Store::read_scope`]): the commit
    /// is guarded by what it read instead of by `guard`.
    pub scope: Option<Scope>,
}

impl Changes {
    /// Writes `puts` in `mode`.
    pub fn write(puts: Vec<Resource>, mode: WriteMode, guard: Option<i64>) -> Changes {
        Changes {
            puts,
            deletes: Vec::new(),
            mode,
            guard,
            dry_run: false,
            scope: None,
        }
    }

    /// Deletes `deletes`.
    pub fn delete(deletes: Vec<(Kind, String, Option<String>)>, guard: Option<i64>) -> Changes {
        Changes {
            puts: Vec::new(),
            deletes,
            mode: WriteMode::Apply,
            guard,
            dry_run: false,
            scope: None,
        }
    }

    /// The same changes, guarded by what a scoped read saw (`None`: by `guard`).
    pub fn scoped(mut self, scope: Option<Scope>) -> Changes {
        self.scope = scope;
        self
    }

    /// The same changes, checked only (`dry_run`) or for real.
    pub fn dry_run(mut self, dry_run: bool) -> Changes {
        self.dry_run = dry_run;
        self
    }
}

/// What one run of a [`Store::transact`] step decided.
#[derive(Debug)]
pub enum Step<T> {
    /// Nothing to write: `transact` returns `T`.
    Done(T),
    /// Commit these changes; `transact` returns `T` with their outcomes.
    Commit(Changes, T),
    /// The step changed or saw changed what it read: run it again on a fresh read
    /// (counts as an attempt).
    Again,
}

/// How a [`Store::transact`] ended.
#[derive(Debug)]
pub struct Transacted<T> {
    /// What the last run of the step returned.
    pub value: T,
    /// The commit's outcomes; empty when the step had nothing to write.
    pub outcomes: Vec<Outcome>,
}

impl Store {
    /// Runs `step` (read, check, decide) and commits the change it returns, running it
    /// again whenever the commit is `Stale`, up to [`TRANSACT_ATTEMPTS`] times; then
    /// gives up with `KeptChanging` naming `what` ("applying", "deleting" ...).
    ///
    /// The outer error is the store's (the commit failed other than by being stale, or
    /// the attempts ran out); the inner one is the step's own, returned as it was (a
    /// refusal, or a read that failed, in the caller's terms).
    pub async fn transact<T, E>(
        &self,
        what: &str,
        mut step: impl AsyncFnMut() -> Result<Step<T>, E>,
    ) -> Result<Result<Transacted<T>, E>, StoreError> {
        for attempt in 1..=TRANSACT_ATTEMPTS {
            let (changes, value) = match step().await {
                Err(e) => return Ok(Err(e)),
                Ok(Step::Done(value)) => {
                    return Ok(Ok(Transacted {
                        value,
                        outcomes: Vec::new(),
                    }))
                }
                Ok(Step::Again) => continue,
                Ok(Step::Commit(changes, value)) => (changes, value),
            };
            let c = &changes;
            let guard = match &c.scope {
                Some(scope) => Some(scope.compares()),
                None => c.guard.map(|g| Self::guard_compares(Some(g))),
            };
            match self.commit_guarded(&c.puts, &c.deletes, c.mode, guard, c.dry_run).await {
                Ok(outcomes) => return Ok(Ok(Transacted { value, outcomes })),
                Err(StoreError::Stale) => {
                    debug!(
                        what,
                        attempt, "the store changed since the step read it; running it again"
                    );
                }
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::KeptChanging {
            what: what.to_string(),
            attempts: TRANSACT_ATTEMPTS,
        })
    }
}
