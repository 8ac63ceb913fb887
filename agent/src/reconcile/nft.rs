//! Step 4a of the reconcile: our nftables table. The table is rendered whole from the
//! view; the kernel gets the smallest transaction that turns the table last committed
//! into it (`calico_render::Delta`), a whole load when no delta can (start, a failed
//! delta, a periodic check that finds the kernel's table differs), and nothing when it
//! is unchanged. Everything is sent in nft's own syntax (`nft -f -`), which nft loads
//! faster than JSON.
//!
//! The periodic check lists our table as text and compares it with the committed table
//! printed the same way (`NftTable::to_text` is what `nft list table` prints; both
//! sides go through `calico_render::normalize_listing`), so a table built by deltas is
//! checked without a reload, and only a real difference loads it whole.
//!
//! Kept in a file of its own because the nft transport is the part of the reconcile
//! that changes most.

use std::sync::Arc;
use std::time::Instant;

use calico_render::{normalize_listing, Delta, NodeView};
use tracing::{debug, info, warn};

use super::{AddressManager, Dataplane, Phases, Reconciler, Report, WorkloadResolver};

impl<D: Dataplane, A: AddressManager, R: WorkloadResolver> Reconciler<D, A, R> {
    /// Renders the table and makes the kernel's equal to it with the smallest
    /// transaction: nothing when it is unchanged, the delta from the table last
    /// committed, or a whole load at start, after a failed transaction, and when the
    /// periodic check finds the kernel's table is not what was committed.
    pub(super) async fn nft_step(&mut self, view: &NodeView, report: &mut Report, phases: &mut Phases) {
        let table = calico_render::render_nft(view);
        report.nft_rules = table.counts().rules;
        phases.mark("render");
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
            // kernel's differs from it, so counters and the table survive a resync that
            // finds nothing to do, also after deltas.
            Delta::Unchanged => match (self.dp.nft_listing().await, table.to_text()) {
                (Ok(Some(listed)), Ok(ours)) if normalize_listing(&listed) == normalize_listing(&ours) => None,
                (Ok(Some(_)), Ok(_)) => Some("our nftables table was changed behind the agent's back"),
                (Ok(None), _) => Some("our nftables table is gone or cannot be read back"),
                (Err(e), _) => {
                    warn!(error = %e, "could not read our nftables table back");
                    Some("the table could not be read back")
                }
                (_, Err(e)) => {
                    warn!(error = %e, "could not print our nftables table");
                    Some("the table could not be printed to compare")
                }
            },
            Delta::Patch(patch) => match patch.to_text() {
                Ok(text) => {
                    report.nft_loads += 1;
                    phases.mark("delta");
                    match self.dp.apply_nft(text.as_bytes()).await {
                        Ok(()) => {
                            report.nft_committed_at = Some(Instant::now());
                            phases.mark("nft");
                            report.to_commit = std::mem::take(&mut phases.done);
                            debug!(commands = patch.len(), bytes = text.len(), "nftables delta committed");
                            patched = true;
                            None
                        }
                        Err(e) => {
                            warn!(error = %e, "nftables delta failed; loading the table whole");
                            Some("a delta failed")
                        }
                    }
                }
                Err(e) => {
                    warn!(error = %e, "could not print the nftables delta; loading the table whole");
                    Some("a delta could not be printed")
                }
            },
            Delta::Whole(why) => Some(why),
        };
        let committed = match whole {
            None => patched,
            Some(why) => {
                info!(reason = why, "loading the nftables table whole");
                report.nft_loads += 1;
                report.nft_whole_loads += 1;
                let loaded = match table.to_load_text() {
                    Ok(text) => {
                        phases.mark("delta");
                        self.dp.apply_nft(text.as_bytes()).await.map_err(|e| e.to_string())
                    }
                    Err(e) => Err(e.to_string()),
                };
                match loaded {
                    Ok(()) => {
                        report.nft_committed_at = Some(Instant::now());
                        phases.mark("nft");
                        report.to_commit = std::mem::take(&mut phases.done);
                        true
                    }
                    Err(e) => {
                        self.committed = None;
                        report.errors.push(format!("nftables: {e}"));
                        report.nft_duration = t.elapsed();
                        return;
                    }
                }
            }
        };
        if committed {
            // The file and the freeing of the table it replaces are the writer's: off the
            // path from this commit to the next.
            let table = Arc::new(table);
            let retired = self.committed.replace(table.clone());
            self.dp.write_nft_file(table, retired);
        }
        report.nft_duration = t.elapsed();
    }
}
