//! Helpers for the calicoctl integration tests: run the real binary, dump etcd.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

#[allow(unused_imports)] // not every test file starts an etcd of its own
pub use calico_store::testing::TestEtcd;

pub const BIN: &str = env!("CARGO_BIN_EXE_calicoctl");

pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

pub fn workspace_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// A command for the binary, its environment cleared of anything that could point it
/// at another etcd.
pub fn command(endpoint: &str, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.env_remove("ETCD_ENDPOINTS")
        .env_remove("ETCD_AUTHORITY")
        .env_remove("CALICO_TIMEOUT")
        .arg("--etcd")
        .arg(endpoint)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// The result of one run, with text output.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
    #[track_caller]
    pub fn assert_ok(&self) -> &Self {
        assert!(self.ok(), "expected success, got {self:?}");
        self
    }
    #[track_caller]
    pub fn assert_fails(&self) -> &Self {
        assert!(
            !self.ok() && self.code.is_some(),
            "expected a failure exit, got {self:?}"
        );
        self
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

pub fn ctl(endpoint: &str, args: &[&str]) -> Run {
    command(endpoint, args).output().expect("run calicoctl").into()
}

pub fn ctl_stdin(endpoint: &str, args: &[&str], input: &str) -> Run {
    let mut child = spawn_stdin(endpoint, args, input);
    let _ = child.stdin.take();
    child.wait_with_output().expect("wait for calicoctl").into()
}

pub fn spawn(endpoint: &str, args: &[&str]) -> Child {
    command(endpoint, args).spawn().expect("spawn calicoctl")
}

pub fn spawn_stdin(endpoint: &str, args: &[&str], input: &str) -> Child {
    let mut child = command(endpoint, args)
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn calicoctl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    child
}

/// Every key under /calico/v1 with its value, every resource's mod revision, and
/// etcd's header revision (which any write at all bumps): equal dumps mean nothing was
/// written.
#[derive(Debug, PartialEq)]
pub struct Dump {
    pub revision: i64,
    pub values: Vec<(String, Result<serde_json::Value, String>)>,
    pub versions: Vec<(String, Option<String>)>,
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn store(endpoint: &str) -> calico_store::Store {
    calico_store::Store::connect(&calico_store::StoreConfig::from_list(endpoint))
        .await
        .expect("connect to test etcd")
}

pub fn dump(endpoint: &str) -> Dump {
    rt().block_on(async {
        let s = store(endpoint).await;
        let listing = s.list(None).await.expect("list");
        let values = s.list_json::<serde_json::Value>("").await.expect("read /calico/v1/");
        let versions = listing
            .resources
            .iter()
            .map(|r| (r.id(), r.metadata().resource_version.clone()))
            .collect();
        Dump {
            revision: listing.revision,
            values,
            versions,
        }
    })
}

/// Puts a JSON value at /calico/v1/<suffix> (status written by an agent, in tests).
pub fn put(endpoint: &str, suffix: &str, value: &serde_json::Value) {
    rt().block_on(async {
        store(endpoint).await.put_json(suffix, value).await.expect("put");
    });
}

/// Puts raw bytes (not JSON) at /calico/v1/<suffix>, as a hostile or broken writer would.
pub fn put_raw(endpoint: &str, suffix: &str, value: &[u8]) {
    rt().block_on(async {
        let s = store(endpoint).await;
        calico_store::testing::raw_put_txn(&s, vec![(format!("{}{suffix}", calico_store::PREFIX), value.to_vec())])
            .await
            .expect("raw put");
    });
}

/// Writes `text` to `dir/name` and returns the path as a string.
pub fn write_file(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write test file");
    p.display().to_string()
}

/// `get KIND -o json` items as (id, resourceVersion).
pub fn versions(endpoint: &str) -> Vec<(String, String)> {
    let r = ctl(endpoint, &["get", "all", "-o", "json"]);
    r.assert_ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("get -o json is JSON");
    assert_eq!(v["kind"], "List");
    v["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| {
            (
                format!(
                    "{}/{}",
                    i["kind"].as_str().unwrap_or_default(),
                    i["metadata"]["name"].as_str().unwrap_or_default()
                ),
                i["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}
