//! Step 4a of the reconcile: our nftables table. The ruleset is rendered from the view,
//! and loaded whole only when it changed, or when the periodic check reads our table
//! back and finds it is not what was last loaded.
//!
//! Kept in a file of its own because the nft transport is the part of the reconcile
//! that changes most (incremental loads, issue 10).

use std::time::Instant;

use calico_render::NodeView;
use tracing::warn;

use super::{AddressManager, Dataplane, Reconciler, Report, WorkloadResolver};

impl<D: Dataplane, A: AddressManager, R: WorkloadResolver> Reconciler<D, A, R> {
    /// Renders the ruleset and loads it when needed; a failure is collected into the
    /// report (and forgets what was loaded, so the next reconcile loads again).
    pub(super) async fn nft_step(&mut self, view: &NodeView, report: &mut Report) {
        let ruleset = calico_render::render_nft(view);
        report.nft_rules = count_rules(&ruleset);
        let hash = ruleset_hash(&ruleset);
        let unchanged = hash.is_some() && hash == self.last_nft;
        // The periodic check: an unchanged ruleset is sent again only when the kernel's
        // table is not what we last loaded (changed behind our back, or never read back
        // since its load), so counters and the table survive a resync that finds
        // nothing to do.
        let verifying = unchanged && self.nft_verify;
        let load = if !unchanged {
            true
        } else if verifying {
            match (self.nft_fingerprint, self.dp.nft_fingerprint().await) {
                (Some((h, want)), Ok(Some(now))) if Some(h) == hash && want == now => false,
                (Some((h, _)), Ok(Some(_))) if Some(h) == hash => {
                    warn!("our nftables table was changed behind the agent's back; loading it whole");
                    true
                }
                (Some(_), Ok(None)) => {
                    warn!("our nftables table is gone; loading it whole");
                    true
                }
                (_, Err(e)) => {
                    warn!(error = %e, "could not read our nftables table back; loading it whole");
                    true
                }
                _ => true,
            }
        } else {
            false
        };
        self.nft_verify = false;
        if load {
            let t = Instant::now();
            match self.dp.apply_nft(&ruleset).await {
                Ok(()) => {
                    self.last_nft = hash;
                    report.nft_loads = 1;
                    // Read back after a check's load only: at scale a listing costs about
                    // what a load does, and a change-driven load is read back at the
                    // next check (which then loads once more).
                    if verifying || self.nft_fingerprint.is_none() {
                        self.nft_fingerprint = match (hash, self.dp.nft_fingerprint().await) {
                            (Some(h), Ok(Some(f))) => Some((h, f)),
                            _ => None,
                        };
                    }
                }
                Err(e) => {
                    self.last_nft = None;
                    self.nft_fingerprint = None;
                    report.errors.push(format!("nftables: {e}"));
                }
            }
            report.nft_duration = t.elapsed();
        }
        drop(ruleset);
    }
}

fn ruleset_hash(ruleset: &nftables::schema::Nftables<'_>) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let json = serde_json::to_vec(ruleset).ok()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    json.hash(&mut h);
    Some(h.finish())
}

fn count_rules(ruleset: &nftables::schema::Nftables<'_>) -> usize {
    use nftables::schema::{NfCmd, NfListObject, NfObject};
    ruleset
        .objects
        .iter()
        .filter(|o| {
            matches!(
                o,
                NfObject::ListObject(NfListObject::Rule(_)) | NfObject::CmdObject(NfCmd::Add(NfListObject::Rule(_)))
            )
        })
        .count()
}
