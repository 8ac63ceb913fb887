//! The agent's copy of the datastore: resources and IPAM handles, kept current by one
//! etcd watch.
//!
//! Bad data never replaces good data: a value that does not decode or fails the
//! per-resource checks is recorded as an error (reported in logs, status and metrics)
//! and the last good version of that key stays in effect.

use std::collections::BTreeMap;
use std::net::IpAddr;

use calico_schema::{validate, Resource};
use calico_store::{decode_resource, WatchEvent, RESOURCES_PREFIX};
use tracing::{info, warn};

use calico_store::ipam::{BlockDoc, HandleInfo, BLOCKS_PREFIX, HANDLES_PREFIX};

#[derive(Debug, Default, Clone)]
struct Entry {
    /// The last value that decoded and validated.
    good: Option<Resource>,
    /// Why the current stored value is not in effect, if it is not.
    error: Option<String>,
}

#[derive(Debug, Default)]
pub struct Cache {
    resources: BTreeMap<String, Entry>,
    /// IPAM handle key suffix -> record.
    handles: BTreeMap<String, HandleInfo>,
    /// IPAM block key -> (block, affine node).
    blocks: BTreeMap<String, (ipnet::IpNet, Option<String>)>,
    pub revision: i64,
    /// Whether a full listing has been seen; until then nothing may be programmed
    /// (a partial view would remove what it has not yet heard of).
    pub synced: bool,
}

impl Cache {
    /// Applies one watch event; true if anything the agent acts on changed.
    pub fn apply(&mut self, ev: WatchEvent) -> bool {
        match ev {
            WatchEvent::Put {
                key,
                value,
                mod_revision,
            } => {
                self.revision = self.revision.max(mod_revision);
                self.put(key, &value, mod_revision)
            }
            WatchEvent::Delete { key, revision } => {
                self.revision = self.revision.max(revision);
                let a = self.resources.remove(&key).is_some();
                let b = key
                    .strip_prefix(HANDLES_PREFIX)
                    .map(|h| self.handles.remove(h).is_some())
                    .unwrap_or(false);
                let c = self.blocks.remove(&key).is_some();
                a || b || c
            }
            WatchEvent::Resync { items, revision } => {
                let changed = self.resync_prefix(calico_store::PREFIX, items, revision);
                self.synced = true;
                changed
            }
        }
    }

    /// Replaces everything under `prefix` with `items` (a fresh listing).
    pub fn resync_prefix(&mut self, prefix: &str, items: Vec<(String, Vec<u8>, i64)>, revision: i64) -> bool {
        let old: BTreeMap<String, Entry> = self
            .resources
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        self.resources.retain(|k, _| !k.starts_with(prefix));
        if HANDLES_PREFIX.starts_with(prefix) {
            self.handles.clear();
        }
        if BLOCKS_PREFIX.starts_with(prefix) {
            self.blocks.clear();
        }
        for (key, value, rev) in items {
            // Keep the last good value across a resync, so bad data that replaced it
            // is still reported rather than silently dropping the good one.
            if let Some(e) = old.get(&key) {
                self.resources.insert(key.clone(), e.clone());
            }
            self.put(key, &value, rev);
        }
        self.revision = self.revision.max(revision);
        true
    }

    fn put(&mut self, key: String, value: &[u8], rev: i64) -> bool {
        let oversized = value.len() > calico_schema::limits::MAX_ETCD_VALUE_BYTES;
        if oversized && !key.starts_with(RESOURCES_PREFIX) {
            warn!(%key, bytes = value.len(), "ignoring an oversized IPAM value");
            return false;
        }
        if let Some(h) = key.strip_prefix(HANDLES_PREFIX) {
            return match serde_json::from_slice::<HandleInfo>(value) {
                Ok(rec) => self.handles.insert(h.to_string(), rec.clone()) != Some(rec),
                Err(e) => {
                    warn!(%key, error = %e, "ignoring undecodable IPAM handle");
                    false
                }
            };
        }
        if key.starts_with(BLOCKS_PREFIX) {
            return match serde_json::from_slice::<BlockDoc>(value) {
                Ok(b) => {
                    let v = (b.cidr, b.affinity);
                    self.blocks.insert(key, v.clone()) != Some(v)
                }
                Err(e) => {
                    warn!(%key, error = %e, "ignoring undecodable IPAM block");
                    false
                }
            };
        }
        if !key.starts_with(RESOURCES_PREFIX) {
            return false;
        }
        // Not even decoded: a hostile value must not cost memory or time here.
        let decoded = if oversized {
            Err(format!(
                "the value is {} bytes; at most {} are decoded",
                value.len(),
                calico_schema::limits::MAX_ETCD_VALUE_BYTES
            ))
        } else {
            decode_resource(&key, value, rev).map_err(|e| e.to_string())
        };
        let decoded = decoded.and_then(|r| {
            let issues = validate::check_resource(&r);
            if issues.is_empty() {
                Ok(r)
            } else {
                Err(issues
                    .iter()
                    .map(std::string::ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "))
            }
        });
        let entry = self.resources.entry(key.clone()).or_default();
        match decoded {
            Ok(r) => {
                if entry.error.take().is_some() {
                    info!(%key, "stored value is valid again");
                }
                let changed = entry.good.as_ref().map(Resource::without_version) != Some(r.without_version());
                entry.good = Some(r);
                changed
            }
            Err(e) => {
                warn!(%key, error = %e, "ignoring invalid data in etcd; keeping the last good value");
                let changed = entry.error.as_deref() != Some(&e);
                entry.error = Some(e);
                changed
            }
        }
    }

    /// Every resource in effect (the last good version of each key).
    pub fn resources(&self) -> Vec<Resource> {
        self.resources.values().filter_map(|e| e.good.clone()).collect()
    }

    /// For every key whose stored value is invalid, the last good value still in
    /// effect (what the agent persists so a restart keeps it).
    pub fn last_good_of_invalid(&self) -> BTreeMap<String, Resource> {
        self.resources
            .iter()
            .filter(|(_, e)| e.error.is_some())
            .filter_map(|(k, e)| e.good.as_ref().map(|g| (k.clone(), g.without_version())))
            .collect()
    }

    /// Seeds the last good value of `key` before the first listing (from what a
    /// previous run persisted). A valid stored value replaces it; an invalid one is
    /// reported and leaves it in effect; a key gone from etcd drops it.
    pub fn preload_good(&mut self, key: String, r: Resource) {
        self.resources.insert(
            key,
            Entry {
                good: Some(r),
                error: None,
            },
        );
    }

    /// Keys whose stored value is not in effect, with why.
    pub fn invalid(&self) -> Vec<(String, String)> {
        self.resources
            .iter()
            .filter_map(|(k, e)| e.error.clone().map(|err| (k.clone(), err)))
            .collect()
    }

    /// Addresses IPAM holds for `handle`.
    pub fn handle_ips(&self, handle: &str) -> Option<&Vec<IpAddr>> {
        self.handles.get(&handle_key_suffix(handle)).map(|r| &r.ips)
    }

    /// IPAM's record for `handle`: its addresses and node.
    pub fn handle(&self, handle: &str) -> Option<&HandleInfo> {
        self.handles.get(&handle_key_suffix(handle))
    }

    /// Every handle (as IPAM names it) with its record.
    pub fn handles(&self) -> impl Iterator<Item = (String, &HandleInfo)> {
        self.handles.iter().map(|(k, v)| (unescape_handle(k), v))
    }

    /// IPAM blocks affine to `node`.
    pub fn node_blocks(&self, node: &str) -> Vec<ipnet::IpNet> {
        self.blocks
            .values()
            .filter(|(_, a)| a.as_deref() == Some(node))
            .map(|(c, _)| *c)
            .collect()
    }
}

fn unescape_handle(k: &str) -> String {
    k.replace("%2F", "/").replace("%25", "%")
}

/// How IPAM spells a handle in its key (see store::ipam::handle_key).
fn handle_key_suffix(handle: &str) -> String {
    calico_store::ipam::handle_key(handle)
        .trim_start_matches(HANDLES_PREFIX)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, v: &str, rev: i64) -> WatchEvent {
        WatchEvent::Put {
            key: key.into(),
            value: v.as_bytes().to_vec(),
            mod_revision: rev,
        }
    }

    const G: &str = "/calico/v1/resources/groups/web";

    #[test]
    fn bad_data_keeps_last_good() {
        let mut c = Cache::default();
        assert!(c.apply(put(
            G,
            r#"{"apiVersion":"calico/v1","kind":"Group","metadata":{"name":"web"},"spec":{}}"#,
            2
        )));
        assert_eq!(c.resources().len(), 1);
        assert!(c.apply(put(G, "{not json", 3)));
        assert_eq!(c.resources().len(), 1, "last good value stays in effect");
        assert_eq!(c.invalid().len(), 1);
        // A value that decodes but fails semantic checks is also refused.
        let bad_sel = r#"{"apiVersion":"calico/v1","kind":"Policy","metadata":{"name":"p"},"spec":{"selector":"a ="}}"#;
        c.apply(put("/calico/v1/resources/policies/p", bad_sel, 4));
        assert_eq!(c.resources().len(), 1);
        assert_eq!(c.invalid().len(), 2);
        c.apply(put(
            G,
            r#"{"apiVersion":"calico/v1","kind":"Group","metadata":{"name":"web"},"spec":{}}"#,
            5,
        ));
        assert_eq!(c.invalid().len(), 1);
    }

    #[test]
    fn handles_tracked() {
        let mut c = Cache::default();
        c.apply(put(
            "/calico/v1/ipam/handles/container%2Fa",
            r#"{"ips":["10.65.0.1"],"node":"h"}"#,
            2,
        ));
        assert_eq!(c.handle_ips("container/a").map(std::vec::Vec::len), Some(1));
        c.apply(WatchEvent::Delete {
            key: "/calico/v1/ipam/handles/container%2Fa".into(),
            revision: 3,
        });
        assert!(c.handle_ips("container/a").is_none());
    }

    #[test]
    fn oversized_values_are_refused_undecoded() {
        let mut c = Cache::default();
        let good = r#"{"apiVersion":"calico/v1","kind":"Group","metadata":{"name":"web"},"spec":{}}"#;
        c.apply(put(G, good, 2));
        let pad = " ".repeat(calico_schema::limits::MAX_ETCD_VALUE_BYTES);
        c.apply(put(G, &format!("{good}{pad}"), 3));
        assert_eq!(c.resources().len(), 1, "the last good value stays");
        let inv = c.invalid();
        assert_eq!(inv.len(), 1);
        assert!(inv[0].1.contains("at most"), "{inv:?}");
    }
}
