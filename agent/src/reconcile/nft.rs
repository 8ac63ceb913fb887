//! Step 4a of the reconcile: our nftables table. The table is rendered whole from the
//! view; the kernel gets the smallest transaction that turns the table last committed
//! into it (`calico_render::Delta`), a whole load when no delta can (start, a failed
//! delta, the periodic check), and nothing when it is unchanged.
//!
//! Kept in a file of its own because the nft transport is the part of the reconcile
//! that changes most.

use std::time::Instant;

use calico_render::{Delta, NodeView};
use tracing::{debug, info, warn};

use super::{AddressManager, Dataplane, Reconciler, Report, WorkloadResolver};

impl<D: Dataplane, A: AddressManager, R: WorkloadResolver> Reconciler<D, A, R> {
    /// Renders the table and makes the kernel's equal to it with the smallest
    /// transaction: nothing when it is unchanged, the delta from the table last
    /// committed, or a whole load at start, after a failed transaction, and when the
    /// periodic check cannot show that the kernel still holds what was committed.
    pub(super) async fn nft_step(&mut self, view: &NodeView, report: &mut Report) {
        let table = calico_render::render_nft(view);
        report.nft_rules = table.counts().rules;
        let verifying = std::mem::take(&mut self.nft_verify);
        let t = Instant::now();
        let delta = match &self.committed {
            Some(old) => table.delta(old),
            None => Delta::Whole("no table committed yet"),
        };
        // Whether a whole load is needed (and why); whether a delta was committed.
        let mut patched = false;
        let whole = match delta {
            Delta::Unchanged if !verifying => None,
            // The periodic check: an unchanged table is sent again only when the
            // kernel's is not provably what was committed (changed behind our back,
            // gone, or changed by deltas since the last read-back), so counters and the
            // table survive a resync that finds nothing to do.
            Delta::Unchanged => {
                let now = self.dp.nft_fingerprint().await;
                match (self.nft_fingerprint, now) {
                    (Some((g, want)), Ok(Some(now))) if g == self.nft_generation && want == now => None,
                    (Some((g, _)), Ok(Some(_))) if g == self.nft_generation => {
                        Some("our nftables table was changed behind the agent's back")
                    }
                    (Some(_), Ok(None)) => Some("our nftables table is gone"),
                    (_, Err(e)) => {
                        warn!(error = %e, "could not read our nftables table back");
                        Some("the table could not be read back")
                    }
                    _ => Some("the table was changed by deltas since it was last read back"),
                }
            }
            Delta::Patch(batch) => {
                let json = batch.to_json_bytes();
                report.nft_loads += 1;
                match self.dp.apply_nft(&json).await {
                    Ok(()) => {
                        debug!(
                            commands = batch.items.len(),
                            bytes = json.len(),
                            "nftables delta committed"
                        );
                        patched = true;
                        None
                    }
                    Err(e) => {
                        warn!(error = %e, "nftables delta failed; loading the table whole");
                        Some("a delta failed")
                    }
                }
            }
            Delta::Whole(why) => Some(why),
        };
        // The whole batch as loaded, when it was: the file gets the same bytes, so a
        // whole load serializes the table once.
        let mut whole_json = None;
        let committed = match whole {
            None => patched,
            Some(why) => {
                info!(reason = why, "loading the nftables table whole");
                let json = table.to_batch().to_json_bytes();
                report.nft_loads += 1;
                report.nft_whole_loads += 1;
                match self.dp.apply_nft(&json).await {
                    Ok(()) => {
                        self.nft_generation += 1;
                        // Read back after a check's load only: at scale a listing costs
                        // about what a load does, and a change-driven load is read back
                        // at the next check (which then loads once more).
                        if verifying || self.nft_fingerprint.is_none() {
                            self.nft_fingerprint = match self.dp.nft_fingerprint().await {
                                Ok(Some(f)) => Some((self.nft_generation, f)),
                                _ => None,
                            };
                        }
                        whole_json = Some(json);
                        true
                    }
                    Err(e) => {
                        self.committed = None;
                        self.nft_fingerprint = None;
                        report.errors.push(format!("nftables: {e}"));
                        report.nft_duration = t.elapsed();
                        return;
                    }
                }
            }
        };
        if committed {
            if whole.is_none() {
                self.nft_generation += 1;
            }
            let json = whole_json.unwrap_or_else(|| table.to_batch().to_json_bytes());
            if let Err(e) = self.dp.write_nft_file(&json).await {
                warn!(error = %e, "could not write the nftables file");
            }
            self.committed = Some(table);
        }
        report.nft_duration = t.elapsed();
    }
}
