//! Container statuses the agent's own reconcile wrote, handed to whoever in this
//! process waits for one: the plugin's Join writes a Container and must not make the
//! veth before the reconcile has taken the Container in (a reconcile working from an
//! older view could remove it), and that reconcile runs in this same process, so it
//! says so directly instead of Join polling etcd for the status key.
//!
//! Only names someone waits for are kept, so the board stays as small as the number
//! of Joins in flight.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use calico_schema::ContainerStatus;
use tokio::sync::watch;

/// Where the reconcile's status writes meet the waiters.
#[derive(Default)]
pub struct StatusBoard {
    waiting: Mutex<HashMap<String, watch::Sender<Option<ContainerStatus>>>>,
}

impl StatusBoard {
    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Sender<Option<ContainerStatus>>>> {
        self.waiting.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Start listening for the status of Container `name`. Call it before writing the
    /// Container, so a status written right after the write is not missed.
    pub fn expect(&self, name: &str) -> StatusWait<'_> {
        let rx = match self.waiting().entry(name.to_string()) {
            std::collections::hash_map::Entry::Occupied(e) => e.get().subscribe(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(watch::channel(None).0).subscribe(),
        };
        StatusWait {
            board: self,
            name: name.to_string(),
            rx,
        }
    }

    /// The reconcile wrote `status` for Container `name` to etcd.
    pub fn written(&self, name: &str, status: &ContainerStatus) {
        if let Some(tx) = self.waiting().get(name) {
            tx.send_replace(Some(status.clone()));
        }
    }
}

/// One waiter, from [`StatusBoard::expect`]; dropping it stops listening.
pub struct StatusWait<'a> {
    board: &'a StatusBoard,
    name: String,
    rx: watch::Receiver<Option<ContainerStatus>>,
}

impl StatusWait<'_> {
    /// The Container this waits for.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The first status written since [`StatusBoard::expect`], or `None` after `timeout`.
    pub async fn wait(mut self, timeout: Duration) -> Option<ContainerStatus> {
        let got = tokio::time::timeout(timeout, self.rx.wait_for(Option::is_some)).await;
        match got {
            Ok(Ok(status)) => status.clone(),
            _ => None,
        }
    }
}

impl Drop for StatusWait<'_> {
    fn drop(&mut self) {
        let mut waiting = self.board.waiting();
        // The last waiter for the name (this one's receiver still counts) takes the
        // entry away.
        if waiting.get(&self.name).is_some_and(|tx| tx.receiver_count() <= 1) {
            waiting.remove(&self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use calico_schema::EndpointState;

    fn status(message: &str) -> ContainerStatus {
        ContainerStatus {
            state: EndpointState::Error,
            message: message.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_written_status_reaches_its_waiter_only() {
        let board = StatusBoard::default();
        let wait = board.expect("a");
        board.written("b", &status("not for a"));
        board.written("a", &status("for a"));
        let got = wait.wait(Duration::from_secs(5)).await.expect("a status");
        assert_eq!(got.message, "for a");
        assert!(board.waiting().is_empty(), "the entry goes with its last waiter");
    }

    #[tokio::test]
    async fn nothing_written_times_out() {
        let board = StatusBoard::default();
        board.written("a", &status("before anyone waited"));
        let wait = board.expect("a");
        assert!(wait.wait(Duration::from_millis(50)).await.is_none());
        assert!(board.waiting().is_empty());
    }

    #[tokio::test]
    async fn two_waiters_share_one_entry() {
        let board = StatusBoard::default();
        let first = board.expect("a");
        let second = board.expect("a");
        drop(first);
        assert_eq!(board.waiting().len(), 1, "the second waiter still listens");
        board.written("a", &status("x"));
        assert!(second.wait(Duration::from_secs(5)).await.is_some());
        assert!(board.waiting().is_empty());
    }
}
