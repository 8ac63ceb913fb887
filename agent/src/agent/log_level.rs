//! The agent's log level from ClusterConfig's `logLevel`, when no `--log` fixed it.
//! The run loop hands each reconcile's level to [`LogControl::follow`]; only a change
//! reaches the subscriber.

use std::sync::{Arc, Mutex};

use calico_schema::LogLevel;
use tracing::{info, warn};

type Setter = dyn Fn(LogLevel) -> Result<(), String> + Send + Sync;

/// Sets the process's log filter (main.rs makes it from tracing's reload handle).
#[derive(Clone)]
pub struct LogControl {
    set: Arc<Setter>,
    current: Arc<Mutex<LogLevel>>,
}

impl std::fmt::Debug for LogControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogControl").field("current", &self.level()).finish()
    }
}

impl LogControl {
    /// `set` is called with each new level; the filter starts at info.
    pub fn new(set: impl Fn(LogLevel) -> Result<(), String> + Send + Sync + 'static) -> LogControl {
        LogControl {
            set: Arc::new(set),
            current: Arc::new(Mutex::new(LogLevel::Info)),
        }
    }

    pub fn level(&self) -> LogLevel {
        *self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// ClusterConfig's level (None: not set, info). Logged at info both before and after
    /// the change, so the switch shows whichever way it goes.
    pub fn follow(&self, wanted: Option<LogLevel>) {
        let wanted = wanted.unwrap_or(LogLevel::Info);
        let mut current = self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if *current == wanted {
            return;
        }
        info!(
            from = current.as_str(),
            to = wanted.as_str(),
            "log level set by ClusterConfig logLevel"
        );
        match (self.set)(wanted) {
            Ok(()) => *current = wanted,
            // Kept as it was; the next reconcile tries again.
            Err(e) => warn!(error = %e, "could not change the log level"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_change_reaches_the_filter_and_unset_means_info() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let seen = calls.clone();
        let ctl = LogControl::new(move |l| {
            seen.lock().unwrap().push(l);
            Ok(())
        });
        ctl.follow(None);
        ctl.follow(Some(LogLevel::Info));
        ctl.follow(Some(LogLevel::Debug));
        ctl.follow(Some(LogLevel::Debug));
        ctl.follow(None);
        assert_eq!(*calls.lock().unwrap(), vec![LogLevel::Debug, LogLevel::Info]);
        assert_eq!(ctl.level(), LogLevel::Info);
    }

    #[test]
    fn a_failed_change_is_retried_on_the_next_call() {
        let fail = Arc::new(Mutex::new(true));
        let f = fail.clone();
        let ctl = LogControl::new(move |_| if *f.lock().unwrap() { Err("busy".into()) } else { Ok(()) });
        ctl.follow(Some(LogLevel::Warn));
        assert_eq!(ctl.level(), LogLevel::Info);
        *fail.lock().unwrap() = false;
        ctl.follow(Some(LogLevel::Warn));
        assert_eq!(ctl.level(), LogLevel::Warn);
    }
}
