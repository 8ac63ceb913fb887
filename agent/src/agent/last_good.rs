//! Fail static across restarts: for each key whose stored value is invalid, the last
//! good value the agent had is kept in a file under the run directory, so that a
//! restarted agent keeps it in effect instead of acting as if the resource did not
//! exist.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use calico_schema::{Resource, RunDir};
use tracing::{info, warn};

use crate::cache::Cache;

/// The persisted last good values, and where they are persisted.
pub(crate) struct LastGood {
    file: PathBuf,
    saved: BTreeMap<String, Resource>,
}

impl LastGood {
    /// Reads the run directory's last-good file (if any) into `cache`, as the values to
    /// keep until etcd has valid ones.
    pub(crate) fn load(run_dir: &RunDir, cache: &mut Cache) -> LastGood {
        let file = run_dir.last_good();
        let saved = load_last_good(&file, cache);
        LastGood { file, saved }
    }

    /// Persists the cache's last good values of invalid keys when they changed; a
    /// failure is logged and retried after the next reconcile.
    pub(crate) fn persist(&mut self, cache: &Cache) {
        let good = cache.last_good_of_invalid();
        if good != self.saved {
            match save_last_good(&self.file, &good) {
                Ok(()) => self.saved = good,
                Err(e) => warn!(error = %e, file = %self.file.display(), "could not persist the last good values"),
            }
        }
    }
}

fn load_last_good(path: &Path, cache: &mut Cache) -> BTreeMap<String, Resource> {
    let mut out = BTreeMap::new();
    let Ok(text) = std::fs::read(path) else {
        return out;
    };
    let map: BTreeMap<String, serde_json::Value> = match serde_json::from_slice(&text) {
        Ok(m) => m,
        Err(e) => {
            warn!(error = %e, file = %path.display(), "ignoring an unreadable last-good file");
            return out;
        }
    };
    for (key, value) in map {
        let bytes = serde_json::to_vec(&value).unwrap_or_default();
        match calico_store::decode_resource(&key, &bytes, 0) {
            Ok(r) => {
                info!(%key, "keeping the last good value from the previous run until etcd has a valid one");
                cache.preload_good(key.clone(), r.clone());
                out.insert(key, r.without_version());
            }
            Err(e) => warn!(%key, error = %e, "ignoring a persisted last-good value"),
        }
    }
    out
}

fn save_last_good(path: &Path, good: &BTreeMap<String, Resource>) -> std::io::Result<()> {
    if good.is_empty() {
        return match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    let map: BTreeMap<&String, serde_json::Value> = good.iter().map(|(k, r)| (k, r.to_json())).collect();
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&map)?)?;
    std::fs::rename(&tmp, path)
}
