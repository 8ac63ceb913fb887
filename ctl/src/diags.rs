//! `calicoctl diags`: a .tar.gz to attach to a bug report.
//!
//! It collects, each on its own so that one failure does not stop the rest (failures
//! are listed in `errors.txt`):
//! - `calico-node.log` (the agent's log, from `calico-node.args` or `--log-dir`),
//!   `bird.conf`, `bird.log`, `calico-node.args`, `nft-rendered.json` (the ruleset the
//!   agent last committed, its `nft.json`: compare with `nft-calico.json`, the kernel's);
//! - `birdc-protocols.txt` (`birdc show protocols all`), `birdc-routes.txt`
//!   (`birdc show route`), through BIRD's control socket;
//! - `nft-calico.json` (`nft -j list table inet calico`: only our table),
//!   `routes-v4.json` / `routes-v6.json` (`ip -j route show proto 80`), run in the
//!   agent's network namespace when it was started with `--netns` (`nsenter --net=`);
//! - `datastore.json`: every key under /calico/v1/ with secrets left out (values of
//!   fields named like passwords, secrets, tokens or private keys are replaced);
//! - `diags.txt`: this calicoctl's etcd settings (TLS files by path, never contents).
//!
//! Files are collected by name, never the run directory whole, so a key file kept
//! beside the agent's files is not taken. Whatever is collected is scrubbed
//! ([`scrub_text`]): PEM private keys and BIRD passwords are left out of every file,
//! even one that is a symlink to a key, and of every text in the datastore dump.
//!
//! The members are staged in a temporary directory `calico-diags-<time>/`, which is
//! archived whole (the tar and flate2 crates: no `tar` program needed on the host).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use calico_schema::now_secs;
use calico_store::PREFIX;
use clap::Args;
use flate2::write::GzEncoder;
use flate2::Compression;
use serde_json::Value;

use crate::agent_proc::{agent_log, DEFAULT_LOG_DIR};
use crate::birdc::birdc;
use crate::cli::GlobalOpts;
use crate::hostcmd::run_cmd;
use crate::run_dir::{AgentFiles, AgentRecord, RunDir, RunDirArg};

#[derive(Debug, Clone, Args)]
pub struct DiagsArgs {
    #[command(flatten)]
    pub dirs: RunDirArg,
    /// Where the agent's log is when no agent record says [default: /var/log/calico]
    #[arg(long, value_name = "DIR")]
    pub log_dir: Option<PathBuf>,
    /// The archive to write [default: ./calico-diags-<time>.tar.gz]
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// Field names whose values are never copied into a dump.
fn is_secret_field(name: &str) -> bool {
    let n = name.to_ascii_lowercase().replace(['_', '-'], "");
    [
        "password",
        "passwd",
        "secret",
        "token",
        "privatekey",
        "keydata",
        "keypem",
    ]
    .iter()
    .any(|s| n.contains(s))
}

/// Replaces the values of secret-looking fields, at any depth.
pub fn redact(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                if is_secret_field(k) {
                    *val = Value::String(LEFT_OUT.into());
                } else {
                    redact(val);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        // A key can hide in any text, a description or a label.
        Value::String(text) => *text = scrub_text(text),
        _ => {}
    }
}

/// What a secret left out is replaced with.
const LEFT_OUT: &str = "(left out of diags)";

/// Leaves secrets out of free text (a log, bird.conf, a value that is not JSON): PEM
/// private-key blocks (`-----BEGIN ... PRIVATE KEY-----` to its END line, or to the end
/// of the text when the END is missing) and BIRD's `password "..."`. Field names are no
/// help in text, so it looks for the secrets' own shapes.
pub fn scrub_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("-----BEGIN ") {
        let after = &rest[i + "-----BEGIN ".len()..];
        let Some(label_end) = after.find("-----") else { break };
        let label = &after[..label_end];
        if !label.ends_with("PRIVATE KEY") {
            out.push_str(&rest[..i + "-----BEGIN ".len()]);
            rest = after;
            continue;
        }
        out.push_str(&rest[..i]);
        out.push_str(LEFT_OUT);
        let end_marker = format!("-----END {label}-----");
        rest = match after.find(&end_marker) {
            Some(j) => &after[j + end_marker.len()..],
            None => "",
        };
    }
    out.push_str(rest);
    scrub_bird_passwords(&out)
}

/// `password "x"` (BIRD's BGP session password) becomes `password "(left out of diags)"`.
fn scrub_bird_passwords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("password") {
        let (head, tail) = rest.split_at(i + "password".len());
        out.push_str(head);
        let quoted = tail.trim_start_matches([' ', '\t']);
        match quoted.strip_prefix('"').and_then(|q| q.find('"').map(|j| &q[j + 1..])) {
            Some(after) => {
                out.push_str(&tail[..tail.len() - quoted.len()]);
                out.push('"');
                out.push_str(LEFT_OUT);
                out.push('"');
                rest = after;
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

/// Every key under /calico/v1/: JSON values as JSON (redacted), anything else as text.
async fn datastore_dump(g: &GlobalOpts) -> Result<Value> {
    // A whole dump may be large: four times the usual bound for its one read.
    let mut cfg = crate::conn::store_config(g)?;
    cfg.timeout *= 4;
    let store = calico_store::Store::connect(&cfg).await?;
    let (kvs, revision) = store.dump(PREFIX).await.context("read /calico/v1/")?;
    let mut items = serde_json::Map::new();
    for (key, raw, mod_revision) in kvs {
        let value = match serde_json::from_slice::<Value>(&raw) {
            Ok(mut v) => {
                redact(&mut v);
                v
            }
            Err(_) => Value::String(scrub_text(&String::from_utf8_lossy(&raw))),
        };
        items.insert(key, serde_json::json!({ "modRevision": mod_revision, "value": value }));
    }
    Ok(serde_json::json!({
        "endpoints": cfg.endpoints,
        "revision": revision,
        "keys": items,
    }))
}

struct Collector {
    dir: PathBuf,
    members: Vec<String>,
    errors: Vec<String>,
}

impl Collector {
    fn put(&mut self, name: &str, text: &str) {
        match std::fs::write(self.dir.join(name), text) {
            Ok(()) => self.members.push(name.into()),
            Err(e) => self.errors.push(format!("{name}: write: {e}")),
        }
    }

    fn take(&mut self, name: &str, r: Result<String>) {
        match r {
            Ok(text) => self.put(name, &text),
            Err(e) => self.errors.push(format!("{name}: {e:#}")),
        }
    }

    /// Copies a text file of the agent's, with secrets scrubbed ([`scrub_text`]): a log
    /// may have caught a key, and bird.conf may hold BGP passwords.
    fn copy(&mut self, name: &str, src: &Path) {
        let r = std::fs::read(src).with_context(|| format!("read {}", src.display()));
        match r {
            Ok(bytes) => self.put(name, &scrub_text(&String::from_utf8_lossy(&bytes))),
            Err(e) => self.errors.push(format!("{name}: {e:#}")),
        }
    }
}

pub async fn diags(g: &GlobalOpts, args: &DiagsArgs) -> Result<()> {
    let run = RunDir(args.dirs.run_dir.clone());
    let record = run.read_record();
    let stamp = now_secs();
    let top = format!("calico-diags-{stamp}");
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{top}.tar.gz")));
    let stage = std::env::temp_dir().join(format!("calicoctl-diags-{}-{stamp}", std::process::id()));
    let dir = stage.join(&top);
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let result = collect_and_pack(g, args, &run, record, &top, &dir, &output).await;
    let _ = std::fs::remove_dir_all(&stage);
    result
}

async fn collect_and_pack(
    g: &GlobalOpts,
    args: &DiagsArgs,
    run: &RunDir,
    record: Option<AgentRecord>,
    top: &str,
    dir: &Path,
    output: &Path,
) -> Result<()> {
    let mut c = Collector {
        dir: dir.to_path_buf(),
        members: Vec::new(),
        errors: Vec::new(),
    };
    // Files of the agent and BIRD.
    let log = match (&args.log_dir, record.as_ref().and_then(|r| r.log_file.clone())) {
        (Some(d), _) => agent_log(d),
        (None, Some(f)) => PathBuf::from(f),
        (None, None) => agent_log(Path::new(DEFAULT_LOG_DIR)),
    };
    c.copy("calico-node.log", &log);
    c.copy("calico-node.args", &run.record());
    c.copy("bird.conf", &run.bird_conf());
    c.copy("nft-rendered.json", &run.nft_file());
    c.copy("bird.log", &run.bird_log());

    // BIRD's view.
    let sock = run.bird_ctl();
    c.take("birdc-protocols.txt", birdc(&sock, &["show", "protocols", "all"]).await);
    c.take("birdc-routes.txt", birdc(&sock, &["show", "route"]).await);

    // The kernel's view, in the agent's namespace.
    let netns = record.as_ref().and_then(|r| r.netns.clone());
    let ns = netns.as_deref();
    c.take(
        "nft-calico.json",
        run_cmd(ns, &["nft", "-j", "list", "table", "inet", "calico"]),
    );
    c.take(
        "routes-v4.json",
        run_cmd(ns, &["ip", "-j", "-4", "route", "show", "proto", "80"]),
    );
    c.take(
        "routes-v6.json",
        run_cmd(ns, &["ip", "-j", "-6", "route", "show", "proto", "80"]),
    );

    // The datastore.
    match datastore_dump(g).await {
        Ok(v) => c.put("datastore.json", &(serde_json::to_string_pretty(&v)? + "\n")),
        Err(e) => c.errors.push(format!("datastore.json: {e:#}")),
    }

    // What produced this.
    let tls = |p: &Option<PathBuf>| {
        p.as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "-".into())
    };
    let info = format!(
        "calicoctl {}\ncollected at {} s since the epoch\nrun dir: {}\nagent netns: {}\nagent log: {}\netcd endpoints: {}\netcd TLS (paths only; contents never collected): ca {}, cert {}, key {}\n",
        env!("CARGO_PKG_VERSION"),
        now_secs(),
        run.0.display(),
        netns.as_deref().unwrap_or("(the host's)"),
        log.display(),
        crate::conn::endpoints(g),
        tls(&g.etcd_ca),
        tls(&g.etcd_cert),
        tls(&g.etcd_key),
    );
    c.put("diags.txt", &info);
    let errors = if c.errors.is_empty() {
        "(nothing failed)\n".to_string()
    } else {
        c.errors.join("\n") + "\n"
    };
    c.put("errors.txt", &errors);

    pack(output, top, dir).with_context(|| format!("write {}", output.display()))?;
    println!("Wrote {} ({} files)", output.display(), c.members.len());
    for e in &c.errors {
        eprintln!("not collected: {e}");
    }
    Ok(())
}

/// Writes `dir` as `top/...` into a gzip-compressed tar at `output`: what
/// `tar czf output -C <parent> top` writes.
fn pack(output: &Path, top: &str, dir: &Path) -> Result<()> {
    let file = std::fs::File::create(output)?;
    let mut archive = tar::Builder::new(GzEncoder::new(file, Compression::default()));
    archive.append_dir_all(top, dir)?;
    archive.into_inner()?.finish()?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubs_private_keys_and_bird_passwords_from_text() {
        let text = "before\n-----BEGIN RSA PRIVATE KEY-----\nMIIsecret\n-----END RSA PRIVATE KEY-----\nmid \
            -----BEGIN CERTIFICATE-----\nMIIcert\n-----END CERTIFICATE-----\n\
            protocol bgp p1 { password \"s3cret\"; neighbor 10.0.0.1; }\n\
            -----BEGIN PRIVATE KEY-----\nMIItruncated";
        let out = scrub_text(text);
        assert!(!out.contains("MIIsecret") && !out.contains("MIItruncated"), "{out}");
        assert!(!out.contains("s3cret"), "{out}");
        assert!(out.contains("MIIcert"), "certificates are public: {out}");
        assert!(out.starts_with("before\n(left out of diags)\nmid "), "{out}");
        assert!(
            out.contains("password \"(left out of diags)\"; neighbor 10.0.0.1;"),
            "{out}"
        );
        assert_eq!(
            scrub_text("no secrets; a password field name alone"),
            "no secrets; a password field name alone"
        );
    }

    #[test]
    fn redacts_secret_fields_only() {
        let mut v = serde_json::json!({
            "spec": {"password": "p", "etcdKeyFile": "/etc/k.pem", "privateKey": "xyz", "labels": {"key": "v"}},
            "items": [{"token": "t", "name": "n"}]
        });
        redact(&mut v);
        assert_eq!(v["spec"]["password"], "(left out of diags)");
        assert_eq!(v["spec"]["privateKey"], "(left out of diags)");
        assert_eq!(v["spec"]["etcdKeyFile"], "/etc/k.pem");
        assert_eq!(v["spec"]["labels"]["key"], "v");
        assert_eq!(v["items"][0]["token"], "(left out of diags)");
        assert_eq!(v["items"][0]["name"], "n");
    }
}
