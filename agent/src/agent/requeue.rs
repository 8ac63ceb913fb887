//! When to reconcile again without a change, as kube-runtime's controller decides it:
//! the error policy turns a reconcile's outcome into an [`Action`] (wait for a change,
//! or requeue after a backoff that doubles while the reconcile keeps failing), and
//! [`Requeue`] holds the one pending requeue the trigger waits on.

use std::time::{Duration, Instant};

/// The first requeue after a failed reconcile; reset by a clean one.
pub(crate) const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
/// The longest requeue backoff: a stuck failure is still retried this often.
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Statuses that could not be written (etcd down) are written again within this long,
/// or the resync period if it is shorter.
pub(crate) const STATUS_RETRY_MAX: Duration = Duration::from_secs(5);

/// What to do after a reconcile (kube-runtime's `Action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Nothing to retry: wait for a change or the periodic resync.
    AwaitChange,
    /// Reconcile again after this long.
    Requeue(Duration),
}

/// The error policy: a reconcile that ended with errors is requeued with a backoff
/// that doubles up to [`BACKOFF_MAX`]; a clean one resets it.
#[derive(Debug)]
pub(crate) struct ErrorPolicy {
    backoff: Duration,
}

impl Default for ErrorPolicy {
    fn default() -> Self {
        ErrorPolicy {
            backoff: BACKOFF_INITIAL,
        }
    }
}

impl ErrorPolicy {
    pub(crate) fn action(&mut self, failed: bool) -> Action {
        if failed {
            let after = self.backoff;
            self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
            Action::Requeue(after)
        } else {
            self.backoff = BACKOFF_INITIAL;
            Action::AwaitChange
        }
    }
}

/// The one pending requeue, if any.
#[derive(Debug, Default)]
pub(crate) struct Requeue {
    next: Option<Instant>,
}

impl Requeue {
    /// Schedules what `action` says; [`Action::AwaitChange`] leaves a pending requeue
    /// as it is.
    pub(crate) fn schedule(&mut self, action: Action) {
        if let Action::Requeue(after) = action {
            self.next = Some(Instant::now() + after);
        }
    }

    /// Requeues within `after` unless a requeue is already pending.
    pub(crate) fn at_most(&mut self, after: Duration) {
        self.next.get_or_insert(Instant::now() + after);
    }

    /// Resolves when the pending requeue is due; never when there is none.
    pub(crate) async fn due(&self) {
        match self.next {
            Some(t) => tokio::time::sleep_until(t.into()).await,
            None => std::future::pending().await,
        }
    }

    /// The pending requeue fired.
    pub(crate) fn fired(&mut self) {
        self.next = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_while_failing_and_resets_when_clean() {
        let mut p = ErrorPolicy::default();
        let ms = Duration::from_millis;
        let got: Vec<Action> = (0..9).map(|_| p.action(true)).collect();
        let want: Vec<Action> = [100, 200, 400, 800, 1600, 3200, 6400, 10000, 10000]
            .map(|m| Action::Requeue(ms(m)))
            .to_vec();
        assert_eq!(got, want);
        assert_eq!(p.action(false), Action::AwaitChange);
        assert_eq!(p.action(true), Action::Requeue(ms(100)));
    }

    #[test]
    fn a_requeue_replaces_and_at_most_keeps_what_is_pending() {
        let mut r = Requeue::default();
        r.schedule(Action::AwaitChange);
        assert!(r.next.is_none());
        r.at_most(Duration::from_secs(5));
        let first = r.next.expect("pending");
        r.at_most(Duration::from_millis(1));
        assert_eq!(r.next, Some(first), "at_most keeps a pending requeue");
        r.schedule(Action::Requeue(Duration::from_millis(1)));
        assert!(r.next.expect("pending") < first, "a requeue replaces it");
        r.schedule(Action::AwaitChange);
        assert!(r.next.is_some(), "awaiting a change leaves it pending");
        r.fired();
        assert!(r.next.is_none());
    }
}
