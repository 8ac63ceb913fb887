//! Keeps calico-docker's FORWARD accept chain in iptables' `filter` table, IPv4 and
//! IPv6 (why: [`calico_render::iptables`]). Runs `iptables-save`/`iptables-restore`
//! from PATH, so it works with whichever backend (nft or legacy) the host's
//! alternatives choose, the same one dockerd uses.

use std::path::{Path, PathBuf};

use calico_render::iptables::{ensure_forward, remove_forward};
use tracing::{debug, info};

use super::command::{run_piped, CommandError};

/// One address family's pair of programs.
#[derive(Debug, Clone, Copy)]
pub struct Family {
    pub name: &'static str,
    save: &'static str,
    restore: &'static str,
}

pub const FAMILIES: [Family; 2] = [
    Family {
        name: "IPv4",
        save: "iptables-save",
        restore: "iptables-restore",
    },
    Family {
        name: "IPv6",
        save: "ip6tables-save",
        restore: "ip6tables-restore",
    },
];

/// What one family's check did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    AlreadyInPlace,
    Changed,
    /// iptables is not installed: there is no iptables FORWARD chain to open.
    NotInstalled,
}

#[derive(Debug, Clone, Default)]
pub struct Iptables {
    netns: Option<PathBuf>,
}

impl Iptables {
    pub fn new(netns: Option<PathBuf>) -> Self {
        Iptables { netns }
    }

    fn save(&self, f: Family) -> Result<Option<String>, CommandError> {
        match run_piped(self.netns.as_deref(), Path::new(f.save), &["-t", "filter"], None) {
            Ok(out) => Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned())),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn restore(&self, f: Family, input: &str) -> Result<(), CommandError> {
        // -w: wait for the xtables lock (legacy backend) instead of failing.
        run_piped(
            self.netns.as_deref(),
            Path::new(f.restore),
            &["-w", "--noflush"],
            Some(input.as_bytes()),
        )
        .map(|_| ())
    }

    /// Makes our chain and jump match, in one `iptables-restore` per family, only when
    /// they differ. Blocking.
    pub fn ensure(&self, interface_prefix: &str) -> Result<Vec<(Family, Outcome)>, CommandError> {
        let mut out = Vec::new();
        for f in FAMILIES {
            let Some(save) = self.save(f)? else {
                out.push((f, Outcome::NotInstalled));
                continue;
            };
            match ensure_forward(&save, interface_prefix) {
                None => {
                    debug!(family = f.name, "iptables FORWARD accept for workloads in place");
                    out.push((f, Outcome::AlreadyInPlace));
                }
                Some(input) => {
                    self.restore(f, &input)?;
                    info!(family = f.name, "iptables FORWARD accept for workloads (re)installed");
                    out.push((f, Outcome::Changed));
                }
            }
        }
        Ok(out)
    }

    /// Removes our chain and jump from both families. Blocking; collects errors.
    pub fn remove(&self) -> Vec<CommandError> {
        let mut errors = Vec::new();
        for f in FAMILIES {
            let res = self
                .save(f)
                .and_then(|save| match save.as_deref().and_then(remove_forward) {
                    Some(input) => self.restore(f, &input),
                    None => Ok(()),
                });
            if let Err(e) = res {
                errors.push(e);
            }
        }
        errors
    }
}
