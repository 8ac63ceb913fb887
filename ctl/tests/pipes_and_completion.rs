//! `calicoctl ... | head`: a reader that goes away ends calicoctl quietly (by SIGPIPE,
//! as Unix tools end, with nothing on stderr); and the completion scripts load.

#[allow(unused_imports)]
mod common;

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

use common::*;

/// Runs calicoctl with its stdout closed at once (`calicoctl ... | true`).
fn closed_early(args: &[&str]) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn calicoctl");
    drop(child.stdout.take());
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("stderr");
    (child.wait().expect("wait"), err)
}

#[test]
fn a_closed_pipe_ends_calicoctl_quietly() {
    let examples = examples_dir().display().to_string();
    for args in [
        vec!["schema"],
        vec!["completion", "bash"],
        vec!["render", "--node", "host1", "-f", examples.as_str()],
        vec!["validate", "-f", examples.as_str()],
    ] {
        let (status, err) = closed_early(&args);
        assert!(
            status.success() || status.signal() == Some(nix::sys::signal::Signal::SIGPIPE as i32),
            "calicoctl {args:?}: {status}"
        );
        assert!(err.is_empty(), "calicoctl {args:?} complained: {err}");
    }
}

#[test]
fn completion_scripts_load() {
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("source <({BIN} completion bash) && complete -p calicoctl"))
        .output()
        .expect("bash");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("calicoctl"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for shell in ["zsh", "fish"] {
        let out = Command::new(BIN)
            .args(["completion", shell])
            .output()
            .expect("calicoctl");
        assert!(out.status.success() && out.stdout.len() > 1000, "completion {shell}");
    }
    let out = Command::new(BIN)
        .args(["completion", "tcsh"])
        .output()
        .expect("calicoctl");
    assert_eq!(out.status.code(), Some(2), "an unknown shell is a usage error");
}

/// A command's own options come first; the connection options are listed apart, under
/// "Global options", and only those the command uses (docs_cli checks every command).
#[test]
fn help_keeps_global_options_apart() {
    for (cmd, flags) in [
        ("apply", &["--etcd ", "--etcd-ca", "--timeout"][..]),
        ("get", &["--etcd ", "--etcd-ca", "--timeout"][..]),
        (
            "addtogroup",
            &["--etcd ", "--etcd-ca", "--timeout", "--docker-host"][..],
        ),
    ] {
        let out = Command::new(BIN).args([cmd, "--help"]).output().expect("run calicoctl");
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        let (own, global) = text
            .split_once("Global options:")
            .unwrap_or_else(|| panic!("{cmd} --help has no Global options heading:\n{text}"));
        assert!(!own.contains("--etcd"), "{cmd}: --etcd among its own options:\n{text}");
        for flag in flags {
            assert!(global.contains(flag), "{cmd}: {flag} not under Global options:\n{text}");
        }
    }
    let out = Command::new(BIN)
        .args(["validate", "--help"])
        .output()
        .expect("run calicoctl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("Global options") && !text.contains("--etcd"),
        "validate never connects:\n{text}"
    );
}

/// `calicoctl man DIR`: one roff page for calicoctl and one per command, from the same
/// definitions as the help.
#[test]
fn man_pages_cover_every_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(BIN)
        .args(["man", dir.path().to_str().expect("utf-8 path")])
        .output()
        .expect("run calicoctl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for page in [
        "calicoctl.1",
        "calicoctl-apply.1",
        "calicoctl-node-stop.1",
        "calicoctl-sync-status.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(
            text.starts_with(".ie") || text.contains("\n.TH "),
            "{page} is not a man page:\n{text}"
        );
    }
    let node = std::fs::read_to_string(dir.path().join("calicoctl-node.1")).expect("node page");
    assert!(node.contains("\\-\\-run\\-dir"), "{node}");
}
