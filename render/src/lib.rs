//! calico-docker's pure renderers: one node's view of the cluster in, the three whole
//! artefacts that node programs out.
//!
//! - [`NodeView::build`] resolves the resources into what one node needs to know.
//! - [`render_nft`] gives the `table inet calico` ([`NftTable`]: the batch that loads it
//!   whole, or the delta from the table last committed).
//! - [`render_routes`] gives the routes the node owns (workload /32 and /128, block blackholes).
//! - [`render_bird`] gives bird.conf for BIRD 2.
//! - [`iptables`] keeps the one chain outside our table (FORWARD accept for workloads).
//!
//! Nothing here does I/O: the agent applies the artefacts, `calicoctl render` prints them,
//! and tests compare them byte for byte. Same input, same bytes: every collection that
//! reaches the output is ordered (BTreeMap/BTreeSet or sorted vectors).

// Product code handles every failure; panics are for tests (and test support).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod bird;
pub mod explain;
pub mod iptables;
pub mod names;
pub mod nft;
pub mod reach;
pub mod routes;
pub mod view;

pub use bird::{render_bird, BirdError};
pub use names::{host_iface_name, short_name};
pub use nft::{
    normalize_listing, render_nft, render_nft_json, rule_comment, Batch, Delta, NftTable, Patch, TextError, TABLE_NAME,
};
pub use routes::{render_routes, RouteKind, RouteSpec, RTPROT_CALICO};
pub use view::{Endpoint, NodeView, SelectorSet};
