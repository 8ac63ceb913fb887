//! A sync's last result, stored as JSON at `/calico/v1/sync/<id>/status`, and
//! `calicoctl sync status`.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use calico_schema::AgentStatus;
use serde::{Deserialize, Serialize};

/// The store suffix of a sync's status.
pub fn status_key(id: &str) -> String {
    format!("sync/{id}/status")
}

pub use calico_schema::now_secs;

/// A directory revision: the git commit when the directory is a git work tree, and
/// always the content hash (which also tells uncommitted edits apart).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Revision {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// `sha256:` + 12 hex digits of every file's path and content.
    pub content: String,
}

impl std::fmt::Display for Revision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.commit {
            Some(c) => write!(f, "git {} ({})", &c[..c.len().min(12)], self.content),
            None => f.write_str(&self.content),
        }
    }
}

/// The error of the latest attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncError {
    /// The revision that was refused; absent when the directory could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<Revision>,
    /// Unix seconds.
    pub at: u64,
    /// One line each; input errors as `file:line:col: field: message` (file relative
    /// to the directory).
    pub errors: Vec<String>,
}

/// One correction of an owned resource changed behind the sync's back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drift {
    /// `Kind/name`.
    pub id: String,
    /// The file that declares it.
    pub source: String,
    /// `changed` (restored) or `deleted` (recreated).
    pub change: String,
    pub at: u64,
}

/// How many drift records are kept.
pub const MAX_DRIFTS: usize = 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct SyncStatus {
    pub id: String,
    /// The directory as given (may be a symlink that git-sync swaps).
    pub dir: String,
    pub prune: bool,
    /// Who runs it: `sync` or `master`, with host and pid.
    #[serde(default)]
    pub runner: String,
    /// The last revision applied (the state that is live).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<Revision>,
    /// Unix seconds when that revision was applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_at: Option<u64>,
    /// The etcd revision its changes were written at: each node's agent enforces the
    /// revision once its own enforced revision has reached this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_revision: Option<i64>,
    /// How many resources that revision declares (and this sync owns).
    #[serde(default)]
    pub resources: usize,
    #[serde(default)]
    pub files: usize,
    /// The latest attempt's error; cleared when a revision applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<SyncError>,
    /// Owned resources restored or recreated after changes made behind the sync's back,
    /// since the sync was first started.
    #[serde(default)]
    pub drifts_corrected: u64,
    /// The most recent corrections, newest last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drifts: Vec<Drift>,
    /// Owned resources whose documents are gone, kept because --prune is off.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub orphaned: Vec<String>,
    /// Prunes held back because other resources still use them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prune_blocked: Vec<String>,
    /// Unix seconds of the latest check of the directory against etcd.
    #[serde(default)]
    pub checked_at: u64,
}

/// `2024-05-01T12:00:00Z` from Unix seconds (UTC; civil-from-days).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

fn ago(now: u64, t: u64) -> String {
    let s = now.saturating_sub(t);
    let rel = match s {
        0..=119 => format!("{s}s ago"),
        120..=7199 => format!("{}m ago", s / 60),
        7200..=172_799 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    };
    format!("{} ({rel})", rfc3339(t))
}

/// Per node, whether its agent enforces the sync's last applied revision, as Flux shows
/// a Kustomization's health: `host1 enforced`, `host2 behind (at 41: why)`, and
/// agents silent for longer than [`crate::wait::ALIVE`] as not reporting.
pub fn enforcement(s: &SyncStatus, agents: &BTreeMap<String, AgentStatus>, now: u64) -> Vec<String> {
    let Some(rev) = s.etcd_revision else { return Vec::new() };
    agents
        .iter()
        .map(|(node, st)| {
            let silent = now.saturating_sub(st.last_reconcile);
            if silent > crate::wait::ALIVE.as_secs() {
                format!("{node} not reporting (its agent last reported {silent}s ago)")
            } else if st.enforced_revision >= rev {
                format!("{node} enforced")
            } else if st.errors.is_empty() {
                format!(
                    "{node} behind (at revision {}, not yet reconciled)",
                    st.enforced_revision
                )
            } else {
                format!(
                    "{node} behind (at revision {}: {})",
                    st.enforced_revision,
                    st.errors.join("; ")
                )
            }
        })
        .collect()
}

/// The human-readable form of `sync status`; `enforcement` from [`enforcement`].
pub fn render(s: &SyncStatus, now: u64, enforcement: &[String]) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| {
        out.push_str(&format!("{k:<19}{v}\n"));
    };
    line("Sync:", s.id.clone());
    line("Directory:", s.dir.clone());
    if !s.runner.is_empty() {
        line("Run by:", s.runner.clone());
    }
    line("Prune:", if s.prune { "yes".into() } else { "no".into() });
    line(
        "Revision:",
        s.revision
            .as_ref()
            .map_or("none applied yet".into(), ToString::to_string),
    );
    if let Some(t) = s.applied_at {
        line("Applied:", ago(now, t));
    }
    line("Resources:", format!("{} (from {} files)", s.resources, s.files));
    if let Some(rev) = s.etcd_revision {
        line("Written at:", format!("etcd revision {rev}"));
    }
    for (i, e) in enforcement.iter().enumerate() {
        line(if i == 0 { "Enforcement:" } else { "" }, e.clone());
    }
    if s.checked_at > 0 {
        line("Last check:", ago(now, s.checked_at));
    }
    line("Drifts corrected:", s.drifts_corrected.to_string());
    for d in &s.drifts {
        line("", format!("{} {} ({}) at {}", d.id, d.change, d.source, rfc3339(d.at)));
    }
    if !s.orphaned.is_empty() {
        line(
            "Orphaned:",
            format!("{} (documents gone; run with --prune to delete)", s.orphaned.join(", ")),
        );
    }
    for p in &s.prune_blocked {
        line("Prune held back:", p.clone());
    }
    match &s.last_error {
        None => line("Last error:", "none".into()),
        Some(e) => {
            let rev = e
                .revision
                .as_ref()
                .map(|r| format!(" in revision {r}"))
                .unwrap_or_default();
            line(
                "Last error:",
                format!("{}{rev}; nothing of it was applied", ago(now, e.at)),
            );
            for l in &e.errors {
                line("", l.clone());
            }
        }
    }
    out
}

/// A sync id: 1-63 of [A-Za-z0-9_.-], starting and ending alphanumeric (a key segment
/// and part of an annotation value).
pub fn check_id(id: &str) -> Result<()> {
    if !calico_schema::validate::is_valid_name(id) {
        bail!("'{id}' is not a valid sync id (1-63 of A-Z a-z 0-9 _ . -, starting and ending alphanumeric)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_714_564_861), "2024-05-01T12:01:01Z");
    }

    #[test]
    fn renders_errors_and_round_trips() {
        let s = SyncStatus {
            id: "x".into(),
            dir: "/d".into(),
            last_error: Some(SyncError {
                revision: Some(Revision {
                    commit: Some("0123456789abcdef".into()),
                    content: "sha256:abc".into(),
                }),
                at: 10,
                errors: vec!["a.yaml:3:5: spec.x: bad".into()],
            }),
            ..Default::default()
        };
        let text = render(&s, 20, &[]);
        assert!(text.contains("in revision git 0123456789ab (sha256:abc)"), "{text}");
        assert!(text.contains("a.yaml:3:5: spec.x: bad"), "{text}");
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["lastError"]["errors"][0], "a.yaml:3:5: spec.x: bad");
        let back: SyncStatus = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);
    }
}
