//! Prometheus text metrics, kept by hand: a handful of counters and gauges does not
//! justify a metrics framework.

use std::fmt::Write;
use std::sync::Mutex;

use crate::reconcile::Report;

#[derive(Debug, Default)]
struct Inner {
    reconciles: u64,
    reconcile_errors: u64,
    reconcile_seconds_sum: f64,
    reconcile_seconds_last: f64,
    nft_apply_seconds_sum: f64,
    nft_apply_seconds_last: f64,
    endpoints_programmed: usize,
    endpoints_failed: usize,
    nft_rules: usize,
    invalid_data: usize,
    nft_loads: u64,
    bird_restarts: u64,
    datastore_ok: bool,
    last_reconcile_unix: u64,
}

#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    pub fn observe(&self, r: &Report, invalid_data: usize, bird_restarts: u64, datastore_ok: bool) {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        m.reconciles += 1;
        if !r.errors.is_empty() {
            m.reconcile_errors += 1;
        }
        m.reconcile_seconds_last = r.duration.as_secs_f64();
        m.reconcile_seconds_sum += m.reconcile_seconds_last;
        // Zero when the ruleset was unchanged and not loaded: keep the last real load.
        if !r.nft_duration.is_zero() {
            m.nft_apply_seconds_last = r.nft_duration.as_secs_f64();
            m.nft_apply_seconds_sum += m.nft_apply_seconds_last;
            m.nft_loads += 1;
        }
        m.endpoints_programmed = r.programmed;
        m.endpoints_failed = r.failed;
        m.nft_rules = r.nft_rules;
        m.invalid_data = invalid_data;
        m.bird_restarts = bird_restarts;
        m.datastore_ok = datastore_ok;
        m.last_reconcile_unix = crate::agent::now_secs();
    }

    pub fn invalid_data(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).invalid_data
    }

    pub fn render(&self) -> String {
        let m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut s = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        };
        metric(
            "calico_reconciles_total",
            "counter",
            "Reconciles run.",
            m.reconciles.to_string(),
        );
        metric(
            "calico_reconcile_errors_total",
            "counter",
            "Reconciles that ended with errors.",
            m.reconcile_errors.to_string(),
        );
        metric(
            "calico_reconcile_seconds_sum",
            "counter",
            "Total time spent reconciling.",
            m.reconcile_seconds_sum.to_string(),
        );
        metric(
            "calico_reconcile_seconds_last",
            "gauge",
            "Duration of the last reconcile.",
            m.reconcile_seconds_last.to_string(),
        );
        metric(
            "calico_nft_apply_seconds_sum",
            "counter",
            "Total time loading the nftables table.",
            m.nft_apply_seconds_sum.to_string(),
        );
        metric(
            "calico_nft_apply_seconds_last",
            "gauge",
            "Duration of the last nftables load.",
            m.nft_apply_seconds_last.to_string(),
        );
        metric(
            "calico_nft_loads_total",
            "counter",
            "nftables table loads (an unchanged ruleset is not loaded again).",
            m.nft_loads.to_string(),
        );
        metric(
            "calico_endpoints_programmed",
            "gauge",
            "Local endpoints programmed.",
            m.endpoints_programmed.to_string(),
        );
        metric(
            "calico_endpoints_failed",
            "gauge",
            "Local endpoints in error.",
            m.endpoints_failed.to_string(),
        );
        metric(
            "calico_nft_rules",
            "gauge",
            "Rules in the rendered nftables table.",
            m.nft_rules.to_string(),
        );
        metric(
            "calico_invalid_data",
            "gauge",
            "Keys in etcd with invalid values, ignored.",
            m.invalid_data.to_string(),
        );
        metric(
            "calico_bird_restarts_total",
            "counter",
            "Times BIRD had to be started again since the agent started.",
            m.bird_restarts.to_string(),
        );
        metric(
            "calico_datastore_up",
            "gauge",
            "1 if the last status write reached etcd, 0 while running fail-static.",
            u8::from(m.datastore_ok).to_string(),
        );
        metric(
            "calico_last_reconcile_timestamp_seconds",
            "gauge",
            "When the last reconcile finished (Unix seconds).",
            m.last_reconcile_unix.to_string(),
        );
        s
    }
}
