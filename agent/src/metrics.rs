//! The agent's Prometheus metrics (prometheus-client): counters, gauges and duration
//! histograms, served as text on /metrics. `promtool check metrics` passes on what
//! [`Metrics::render`] prints (tested).
//!
//! It reads the reconcile's [`Report`] and nothing of the run loop (`agent`), which
//! feeds it, nor of `http`, which serves it.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use calico_render::nft::RuleCounters;

use crate::reconcile::Report;

/// A gauge that holds a float (seconds).
type FloatGauge = Gauge<f64, AtomicU64>;

/// Durations from 1 ms to about 65 s, doubling: a one-endpoint change and a whole-table
/// load of 10k endpoints both land in a bucket of their own.
fn duration_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    reconcile_errors: Counter,
    reconcile_seconds: Histogram,
    reconcile_seconds_last: FloatGauge,
    nft_apply_seconds: Histogram,
    nft_apply_seconds_last: FloatGauge,
    nft_loads: Counter,
    event_to_commit_seconds: Histogram,
    event_to_commit_seconds_last: FloatGauge,
    event_to_commit_phase_seconds: Family<Vec<(String, String)>, FloatGauge>,
    endpoints_programmed: Gauge,
    endpoints_failed: Gauge,
    nft_rules: Gauge,
    invalid_data: Gauge,
    bird_restarts: Counter,
    datastore_up: Gauge,
    last_reconcile_unix: Gauge,
    enforced_revision: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Metrics {
            registry: Registry::default(),
            reconciles: Counter::default(),
            reconcile_errors: Counter::default(),
            reconcile_seconds: duration_buckets(),
            reconcile_seconds_last: FloatGauge::default(),
            nft_apply_seconds: duration_buckets(),
            nft_apply_seconds_last: FloatGauge::default(),
            nft_loads: Counter::default(),
            event_to_commit_seconds: duration_buckets(),
            event_to_commit_seconds_last: FloatGauge::default(),
            event_to_commit_phase_seconds: Family::default(),
            endpoints_programmed: Gauge::default(),
            endpoints_failed: Gauge::default(),
            nft_rules: Gauge::default(),
            invalid_data: Gauge::default(),
            bird_restarts: Counter::default(),
            datastore_up: Gauge::default(),
            last_reconcile_unix: Gauge::default(),
            enforced_revision: Gauge::default(),
        };
        let r = &mut m.registry;
        // Counters are registered without `_total`: the encoder appends it.
        r.register("calico_reconciles", "Reconciles run", m.reconciles.clone());
        r.register(
            "calico_reconcile_errors",
            "Reconciles that ended with errors",
            m.reconcile_errors.clone(),
        );
        r.register(
            "calico_reconcile_seconds",
            "Time each reconcile took",
            m.reconcile_seconds.clone(),
        );
        r.register(
            "calico_reconcile_seconds_last",
            "Duration of the last reconcile, in seconds",
            m.reconcile_seconds_last.clone(),
        );
        r.register(
            "calico_nft_apply_seconds",
            "Time each nftables load took (an unchanged ruleset is not loaded)",
            m.nft_apply_seconds.clone(),
        );
        r.register(
            "calico_nft_apply_seconds_last",
            "Duration of the last nftables load, in seconds",
            m.nft_apply_seconds_last.clone(),
        );
        r.register(
            "calico_nft_loads",
            "nftables table loads (an unchanged ruleset is not loaded again)",
            m.nft_loads.clone(),
        );
        r.register(
            "calico_event_to_commit_seconds",
            "From the etcd watch event that made a reconcile necessary to the kernel's commit of the nftables transaction it caused",
            m.event_to_commit_seconds.clone(),
        );
        r.register(
            "calico_event_to_commit_seconds_last",
            "The last event-to-commit time, in seconds",
            m.event_to_commit_seconds_last.clone(),
        );
        r.register(
            "calico_event_to_commit_phase_seconds",
            "Where the last event-to-commit time went: the wait before the reconcile (debounce), then the reconcile's steps up to the commit, in seconds",
            m.event_to_commit_phase_seconds.clone(),
        );
        r.register(
            "calico_endpoints_programmed",
            "Local endpoints programmed",
            m.endpoints_programmed.clone(),
        );
        r.register(
            "calico_endpoints_failed",
            "Local endpoints in error",
            m.endpoints_failed.clone(),
        );
        r.register(
            "calico_nft_rules",
            "Rules in the rendered nftables table",
            m.nft_rules.clone(),
        );
        r.register(
            "calico_invalid_data",
            "Keys in etcd with invalid values, ignored",
            m.invalid_data.clone(),
        );
        r.register(
            "calico_bird_restarts",
            "Times BIRD had to be started again since the agent started",
            m.bird_restarts.clone(),
        );
        r.register(
            "calico_datastore_up",
            "1 if the last status write reached etcd, 0 while running fail-static",
            m.datastore_up.clone(),
        );
        r.register(
            "calico_last_reconcile_timestamp_seconds",
            "When the last reconcile finished (Unix seconds)",
            m.last_reconcile_unix.clone(),
        );
        r.register(
            "calico_enforced_revision",
            "The etcd revision whose desired state the dataplane enforces (the last reconcile without errors)",
            m.enforced_revision.clone(),
        );
        m
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// A count as a gauge value (saturating: a gauge is an i64).
fn level(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

impl Metrics {
    pub fn observe(&self, r: &Report, invalid_data: usize, bird_restarts: u64, datastore_ok: bool) {
        self.reconciles.inc();
        if !r.errors.is_empty() {
            self.reconcile_errors.inc();
        }
        let secs = r.duration.as_secs_f64();
        self.reconcile_seconds.observe(secs);
        self.reconcile_seconds_last.set(secs);
        // Zero when the ruleset was unchanged and not loaded: keep the last real load.
        if !r.nft_duration.is_zero() {
            let secs = r.nft_duration.as_secs_f64();
            self.nft_apply_seconds.observe(secs);
            self.nft_apply_seconds_last.set(secs);
            self.nft_loads.inc();
        }
        self.endpoints_programmed.set(level(r.programmed));
        self.endpoints_failed.set(level(r.failed));
        self.nft_rules.set(level(r.nft_rules));
        self.invalid_data.set(level(invalid_data));
        // BIRD's supervisor counts restarts itself; the counter follows it.
        let seen = self.bird_restarts.get();
        if bird_restarts > seen {
            self.bird_restarts.inc_by(bird_restarts - seen);
        }
        self.datastore_up.set(i64::from(datastore_ok));
        self.last_reconcile_unix.set(level(calico_schema::now_secs()));
    }

    /// One change's time from its etcd event reaching the agent to the kernel's commit of
    /// the nftables transaction it caused (debounce, calculation and nft included).
    pub fn observe_event_to_commit(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        self.event_to_commit_seconds.observe(secs);
        self.event_to_commit_seconds_last.set(secs);
    }

    /// Where the last event-to-commit time went, phase by phase (a phase named twice is
    /// added up); phases the last change did not have read 0.
    pub fn set_event_to_commit_phases(&self, phases: &[(&'static str, std::time::Duration)]) {
        let mut sums: std::collections::BTreeMap<&str, f64> = std::collections::BTreeMap::new();
        for (name, d) in phases {
            *sums.entry(name).or_default() += d.as_secs_f64();
        }
        self.event_to_commit_phase_seconds.clear();
        for (name, secs) in sums {
            self.event_to_commit_phase_seconds
                .get_or_create(&vec![("phase".to_string(), name.to_string())])
                .set(secs);
        }
    }

    /// The revision the last error-free reconcile enforced (what `apply --wait` waits for).
    pub fn set_enforced_revision(&self, revision: i64) {
        self.enforced_revision.set(revision);
    }

    pub fn invalid_data(&self) -> usize {
        usize::try_from(self.invalid_data.get()).unwrap_or(0)
    }

    /// The metrics in OpenMetrics text (`application/openmetrics-text`), what
    /// prometheus-client writes and what Prometheus asks for first when it scrapes.
    pub fn render_openmetrics(&self) -> String {
        let mut s = String::new();
        // Writing into a String cannot fail; an empty page would be the only outcome.
        let _ = encode(&mut s, &self.registry);
        s
    }

    /// [`Self::render_openmetrics`] with the per-rule counters read from the kernel.
    pub fn render_openmetrics_with(&self, rules: &RuleCounters) -> String {
        let mut page = self.render_openmetrics();
        let eof = page.strip_suffix("# EOF\n").map(str::len).unwrap_or(page.len());
        page.truncate(eof);
        page.push_str(&rule_families(rules, true));
        page.push_str("# EOF\n");
        page
    }

    /// [`Self::render`] with the per-rule counters read from the kernel.
    pub fn render_with(&self, rules: &RuleCounters) -> String {
        let mut page = self.render();
        page.push_str(&rule_families(rules, false));
        page
    }

    /// The metrics in the classic Prometheus text format 0.0.4 (`text/plain`), for
    /// scrapers and tools that read only that, promtool among them. The formats differ
    /// only where this rewrites: a counter family is named with its `_total` suffix, and
    /// there is no `# EOF` or `# UNIT`.
    pub fn render(&self) -> String {
        openmetrics_to_text(&self.render_openmetrics())
    }
}

/// Content type of [`Metrics::render`].
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Content type of [`Metrics::render_openmetrics`].
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `calico_rule_packets_total` and `calico_rule_bytes_total`, one sample per policy and
/// group rule, labelled with the rule's comment and its direction. Written by hand, not
/// through the registry: the values are the kernel's, read at scrape time, and go back
/// to zero when the delta rewrites the rule's chain (a counter reset, which `rate()`
/// expects).
fn rule_families(rules: &RuleCounters, openmetrics: bool) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for (family, help, bytes) in [
        (
            "calico_rule_packets",
            "Packets that matched each policy and group rule (its nftables counter)",
            false,
        ),
        (
            "calico_rule_bytes",
            "Bytes of the packets that matched each policy and group rule (its nftables counter)",
            true,
        ),
    ] {
        let name = if openmetrics {
            family.to_string()
        } else {
            format!("{family}_total")
        };
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        for (rule, c) in rules {
            let direction = match calico_render::nft::rule_direction(rule) {
                Some(calico_schema::PolicyType::Ingress) => "ingress",
                Some(calico_schema::PolicyType::Egress) => "egress",
                None => continue,
            };
            let v = if bytes { c.bytes } else { c.packets };
            let _ = writeln!(
                out,
                "{family}_total{{rule=\"{}\",direction=\"{direction}\"}} {v}",
                label_value(rule)
            );
        }
    }
    out
}

/// A label value as the exposition formats quote it.
fn label_value(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn openmetrics_to_text(om: &str) -> String {
    let counters: std::collections::HashSet<&str> = om
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(om.len() + 8 * counters.len());
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|tag| {
            let rest = line.strip_prefix(tag)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{tag}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn report() -> Report {
        Report {
            programmed: 3,
            failed: 1,
            nft_rules: 41,
            duration: Duration::from_millis(12),
            nft_duration: Duration::from_millis(7),
            ..Default::default()
        }
    }

    fn rules() -> RuleCounters {
        let mut c = RuleCounters::new();
        c.insert(
            "Policy/db-web ingress[2]".into(),
            calico_render::nft::RuleCount { packets: 7, bytes: 420 },
        );
        c.insert("Group/A_C_E egress[0]".into(), calico_render::nft::RuleCount::default());
        // A name with what the formats must escape (unvalidated data can reach a comment).
        c.insert(
            "Policy/a\"b\\c ingress[0]".into(),
            calico_render::nft::RuleCount { packets: 1, bytes: 60 },
        );
        c
    }

    #[test]
    fn rule_counters_in_both_formats() {
        let m = Metrics::default();
        m.observe(&report(), 0, 0, true);
        let text = m.render_with(&rules());
        for line in [
            "# TYPE calico_rule_packets_total counter",
            "calico_rule_packets_total{rule=\"Policy/db-web ingress[2]\",direction=\"ingress\"} 7",
            "calico_rule_bytes_total{rule=\"Policy/db-web ingress[2]\",direction=\"ingress\"} 420",
            "calico_rule_packets_total{rule=\"Group/A_C_E egress[0]\",direction=\"egress\"} 0",
            "calico_rule_packets_total{rule=\"Policy/a\\\"b\\\\c ingress[0]\",direction=\"ingress\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line:?} in\n{text}");
        }
        let om = m.render_openmetrics_with(&rules());
        assert!(om.ends_with("# EOF\n") && om.matches("# EOF").count() == 1, "{om}");
        assert!(om.contains("# TYPE calico_rule_packets counter\n"));
        assert!(om.contains("calico_rule_bytes_total{rule=\"Policy/db-web ingress[2]\",direction=\"ingress\"} 420\n"));
    }

    #[test]
    fn names_and_values() {
        let m = Metrics::default();
        m.observe(&report(), 2, 1, true);
        m.observe(&report(), 2, 1, true);
        m.observe_event_to_commit(Duration::from_millis(30));
        let text = m.render();
        for line in [
            "calico_reconciles_total 2",
            "calico_nft_loads_total 2",
            "calico_endpoints_programmed 3",
            "calico_endpoints_failed 1",
            "calico_nft_rules 41",
            "calico_invalid_data 2",
            "calico_bird_restarts_total 1",
            "calico_datastore_up 1",
            "calico_reconcile_seconds_count 2",
            "calico_nft_apply_seconds_count 2",
            "calico_reconcile_seconds_last 0.012",
            "calico_event_to_commit_seconds_count 1",
            "calico_event_to_commit_seconds_last 0.03",
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line:?} in\n{text}");
        }
        assert_eq!(m.invalid_data(), 2);
        assert!(text.contains("# TYPE calico_reconciles_total counter\n"));
        assert!(!text.contains("# EOF"));
        let om = m.render_openmetrics();
        assert!(om.contains("# TYPE calico_reconciles counter\n") && om.ends_with("# EOF\n"));
    }

    /// promtool (Debian's prometheus package) lints the page the way Prometheus users
    /// do. Root-free; fails when promtool is missing unless CALICO_ALLOW_SKIP is set.
    #[test]
    fn promtool_accepts_the_page() {
        let m = Metrics::default();
        m.observe(&report(), 0, 0, false);
        let mut child = match std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
        {
            Ok(c) => c,
            Err(e) if std::env::var_os("CALICO_ALLOW_SKIP").is_some() => {
                eprintln!("SKIP: promtool: {e}");
                return;
            }
            Err(e) => panic!("promtool: {e} (scripts/install-deps.sh installs prometheus)"),
        };
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(m.render_with(&rules()).as_bytes())
            .expect("write to promtool");
        let out = child.wait_with_output().expect("promtool");
        assert!(
            out.status.success(),
            "promtool check metrics: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            m.render_with(&rules())
        );
    }
}
