//! Helpers for the sync and master tests: long-running calicoctl processes killed on
//! drop, a git repository published git-sync style, and direct etcd access.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use calico_schema::{Kind, Resource, OWNER_ANNOTATION, SOURCE_ANNOTATION};
use calico_store::ipam::Ipam;
use calico_store::{Store, StoreConfig, WriteMode};

pub use calico_store::testing::TestEtcd;

pub const BIN: &str = env!("CARGO_BIN_EXE_calicoctl");

/// A calicoctl run to completion.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

fn base(endpoint: &str, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.env_remove("ETCD_ENDPOINTS")
        .env_remove("ETCD_AUTHORITY")
        .env_remove("CALICO_TIMEOUT")
        .env_remove("RUST_LOG")
        .arg("--etcd")
        .arg(endpoint)
        .args(args)
        .stdin(Stdio::null());
    c
}

pub fn ctl(endpoint: &str, args: &[&str]) -> Run {
    let o = base(endpoint, args).output().expect("run calicoctl");
    Run {
        code: o.status.code(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// A long-running calicoctl (sync, master), its stderr in a file; killed when dropped.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    log: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Proc {
    pub fn spawn(name: &str, endpoint: &str, args: &[&str]) -> Proc {
        let tmp = tempfile::tempdir().expect("temp dir");
        let log = tmp.path().join("stderr.log");
        let f = std::fs::File::create(&log).expect("log file");
        let child = base(endpoint, args)
            .stdout(f.try_clone().expect("dup"))
            .stderr(f)
            .spawn()
            .expect("spawn calicoctl");
        Proc {
            name: name.to_string(),
            child: Some(child),
            log,
            _tmp: tmp,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(std::process::Child::id).unwrap_or(0)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn count(&self, needle: &str) -> usize {
        self.log().matches(needle).count()
    }

    /// SIGKILL: no chance to hand anything over.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Still running?
    pub fn alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().ok().flatten().is_none(),
            None => false,
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- {} log ----\n{}", self.name, self.log());
        }
        self.kill();
    }
}

/// Polls `f` every 20 ms until it returns Some or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Direct etcd access for checks and for changes made "behind the sync's back".
pub struct Db {
    rt: tokio::runtime::Runtime,
    pub store: Store,
}

impl Db {
    pub fn connect(endpoint: &str) -> Db {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let store = rt
            .block_on(Store::connect(&StoreConfig::from_list(endpoint)))
            .expect("connect to test etcd");
        Db { rt, store }
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    pub fn list(&self) -> Vec<Resource> {
        self.block_on(self.store.list(None)).expect("list").resources
    }

    /// id -> resource, for the resources `calico/owner` says `owner` owns.
    pub fn owned(&self, owner: &str) -> BTreeMap<String, Resource> {
        self.list()
            .into_iter()
            .filter(|r| r.metadata().annotations.get(OWNER_ANNOTATION).map(String::as_str) == Some(owner))
            .map(|r| (r.id(), r))
            .collect()
    }

    /// id -> resourceVersion of every resource.
    pub fn versions(&self) -> BTreeMap<String, String> {
        self.list()
            .into_iter()
            .map(|r| (r.id(), r.metadata().resource_version.clone().unwrap_or_default()))
            .collect()
    }

    pub fn get(&self, kind: Kind, name: &str) -> Option<Resource> {
        self.block_on(self.store.get(kind, name)).expect("get")
    }

    /// Writes resources from YAML, unchecked (as a buggy or hurried admin would).
    pub fn put_yaml(&self, yaml: &str) {
        let rs: Vec<Resource> = calico_schema::load_str("test", yaml)
            .expect("test YAML")
            .into_iter()
            .map(|l| l.resource)
            .collect();
        self.block_on(self.store.write(&rs, WriteMode::Apply, None, false))
            .expect("write");
    }

    pub fn delete(&self, kind: Kind, name: &str) {
        self.block_on(self.store.delete(&[(kind, name.to_string(), None)], None, false))
            .expect("delete");
    }

    pub fn status(&self, id: &str) -> Option<serde_json::Value> {
        self.block_on(self.store.get_json(&format!("sync/{id}/status")))
            .expect("read sync status")
    }

    pub fn json(&self, suffix: &str) -> Option<serde_json::Value> {
        self.block_on(self.store.get_json(suffix)).expect("read json")
    }

    pub fn ipam(&self) -> Ipam {
        Ipam::new(self.store.client(), Duration::from_secs(5))
    }
}

/// The label every test resource carries to show which revision wrote it.
pub fn rev_of(r: &Resource) -> Option<&str> {
    r.metadata().labels.get("rev").map(String::as_str)
}

pub fn source_of(r: &Resource) -> Option<&str> {
    r.metadata().annotations.get(SOURCE_ANNOTATION).map(String::as_str)
}

/// A Group document labelled with a revision.
pub fn group(name: &str, rev: &str) -> String {
    format!("apiVersion: calico/v1\nkind: Group\nmetadata:\n  name: {name}\n  labels: {{rev: \"{rev}\"}}\nspec: {{}}\n")
}

pub fn node(name: &str, rev: &str) -> String {
    format!("apiVersion: calico/v1\nkind: Node\nmetadata:\n  name: {name}\n  labels: {{rev: \"{rev}\"}}\nspec: {{}}\n")
}

pub fn container(name: &str, node: &str, groups: &[&str], rev: &str) -> String {
    format!(
        "apiVersion: calico/v1\nkind: Container\nmetadata:\n  name: {name}\n  labels: {{rev: \"{rev}\"}}\nspec:\n  node: {node}\n  netns: /var/run/netns/{name}\n  groups: [{}]\n",
        groups.join(", ")
    )
}

pub fn policy(name: &str, rev: &str) -> String {
    format!(
        "apiVersion: calico/v1\nkind: Policy\nmetadata:\n  name: {name}\n  labels: {{rev: \"{rev}\"}}\nspec:\n  order: 10\n  selector: all()\n  ingress:\n  - action: Allow\n    protocol: TCP\n    destination: {{ports: [80]}}\n"
    )
}

pub fn docs(parts: &[String]) -> String {
    parts.join("---\n")
}

/// A git repository and a git-sync style publication of it: each published commit is
/// a worktree `rev-N` next to the `current` symlink, swapped atomically by a rename; the
/// previous worktree is removed afterwards, as git-sync does.
pub struct Repo {
    _tmp: tempfile::TempDir,
    pub work: PathBuf,
    pub publish: PathBuf,
    published: Vec<PathBuf>,
}

fn git(dir: &Path, args: &[&str]) -> String {
    let o = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=test",
            "-c",
            "user.email=test@example.com",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .stdin(Stdio::null())
        .output()
        .expect("run git");
    assert!(
        o.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

impl Repo {
    pub fn new() -> Repo {
        let tmp = tempfile::tempdir().expect("temp dir");
        let work = tmp.path().join("repo");
        let publish = tmp.path().join("git");
        std::fs::create_dir_all(&work).unwrap();
        std::fs::create_dir_all(&publish).unwrap();
        git(&work, &["init", "-q"]);
        Repo {
            _tmp: tmp,
            work,
            publish,
            published: Vec::new(),
        }
    }

    /// The directory a sync follows.
    pub fn current(&self) -> PathBuf {
        self.publish.join("current")
    }

    /// Writes (Some) or deletes (None) files, commits, returns the commit.
    pub fn commit(&self, changes: &[(&str, Option<&str>)], msg: &str) -> String {
        for (path, content) in changes {
            let p = self.work.join(path);
            match content {
                Some(text) => {
                    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                    std::fs::write(&p, text).unwrap();
                }
                None => std::fs::remove_file(&p).unwrap(),
            }
        }
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-q", "--allow-empty", "-m", msg]);
        git(&self.work, &["rev-parse", "HEAD"])
    }

    /// Checks `commit` out as a new worktree and swaps `current` to it atomically; the
    /// previous worktree is then removed. Returns when the swap is done.
    pub fn publish(&mut self, commit: &str) {
        let name = format!("rev-{}", self.published.len() + 1);
        let wt = self.publish.join(&name);
        git(
            &self.work,
            &["worktree", "add", "-q", "--detach", wt.to_str().unwrap(), commit],
        );
        let tmp = self.publish.join("current.tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&name, &tmp).unwrap();
        std::fs::rename(&tmp, self.current()).unwrap();
        if let Some(old) = self.published.last() {
            git(&self.work, &["worktree", "remove", "--force", old.to_str().unwrap()]);
        }
        self.published.push(wt);
    }
}
