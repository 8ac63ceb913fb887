//! Watching a host's `table inet calico` while something happens to its agent: the
//! table must never disappear or lose rules (the agent never flushes on start).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::netns::Netns;

/// What a [`RulesetWatch`] saw.
#[derive(Debug, Clone, Default)]
pub struct RulesetSeen {
    pub listings: usize,
    /// Listings that failed (the table was missing) with nft's message.
    pub missing: Vec<String>,
    pub min_rules: usize,
    pub max_rules: usize,
}

/// Lists `table inet calico` in a host namespace in a tight loop until stopped.
pub struct RulesetWatch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<RulesetSeen>>,
    thread: Option<JoinHandle<()>>,
}

/// Rules in `nft -j list table inet calico` output.
pub fn count_rules(json: &str) -> usize {
    json.matches("{\"rule\":").count()
}

/// The rule count of the table now; `None` if it is missing.
pub fn rules_now(host: &Netns) -> Option<usize> {
    host.exec(&["nft", "-j", "list", "table", "inet", "calico"])
        .ok()
        .map(|j| count_rules(&j))
}

impl RulesetWatch {
    pub fn start(host: &Netns) -> RulesetWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(RulesetSeen {
            min_rules: usize::MAX,
            ..Default::default()
        }));
        let (stop2, seen2, name) = (stop.clone(), seen.clone(), host.name.clone());
        let thread = std::thread::spawn(move || {
            let ns = Netns { name };
            while !stop2.load(Ordering::Relaxed) {
                let r = ns.exec(&["nft", "-j", "list", "table", "inet", "calico"]);
                let mut s = seen2.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                s.listings += 1;
                match r {
                    Ok(json) => {
                        let n = count_rules(&json);
                        s.min_rules = s.min_rules.min(n);
                        s.max_rules = s.max_rules.max(n);
                    }
                    Err(e) => s.missing.push(e.to_string()),
                }
            }
            // Borrowed, not owned: the namespace belongs to the cluster.
            std::mem::forget(ns);
        });
        RulesetWatch {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    pub fn finish(mut self) -> RulesetSeen {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl Drop for RulesetWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
