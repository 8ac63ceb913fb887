//! Golden files: every scenario under tests/golden/<name>/ has an input.yaml (resources)
//! and a scenario.json (node, IPAM blocks, assigned addresses); the test renders and
//! compares with nft.json, nft.txt (the same table in nft's own syntax, what
//! `nft list table` prints), routes.json and bird.conf next to them. `UPDATE_GOLDEN=1`
//! rewrites them. When run as root it also checks each nft.json with `nft -c -j -f` and
//! each nft.txt with `nft -c -f`, and each bird.conf with `bird -p -c` whenever bird is
//! installed.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use calico_render::{render_bird, render_nft, render_nft_json, render_routes, NodeView};
use calico_schema::Resource;
use ipnet::IpNet;

#[derive(serde::Deserialize)]
struct Scenario {
    node: String,
    #[serde(default)]
    blocks: Vec<IpNet>,
    #[serde(default)]
    addrs: BTreeMap<String, Vec<IpAddr>>,
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

pub fn load_resources(path: &Path) -> Vec<Resource> {
    let text = std::fs::read_to_string(path).unwrap();
    let loaded = calico_schema::load_str(&path.display().to_string(), &text)
        .unwrap_or_else(|d| panic!("{}: {d}", path.display()));
    loaded.into_iter().map(|l| l.resource).collect()
}

fn render_dir(dir: &Path) -> [(String, String); 4] {
    let sc: Scenario = serde_json::from_str(&std::fs::read_to_string(dir.join("scenario.json")).unwrap()).unwrap();
    let resources = load_resources(&dir.join("input.yaml"));
    let view = NodeView::build(&sc.node, &resources, &sc.addrs, &sc.blocks);
    let nft = render_nft_json(&view) + "\n";
    let text = render_nft(&view)
        .to_text()
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let routes = serde_json::to_string_pretty(&render_routes(&view)).unwrap() + "\n";
    let bird = render_bird(&view).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    [
        ("nft.json".to_string(), nft),
        ("nft.txt".to_string(), text),
        ("routes.json".to_string(), routes),
        ("bird.conf".to_string(), bird),
    ]
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false)
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn golden() {
    let update = std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("input.yaml").exists())
        .collect();
    dirs.sort();
    let mut failures = Vec::new();
    for dir in &dirs {
        for (file, got) in render_dir(dir) {
            let path = dir.join(&file);
            if update {
                std::fs::write(&path, &got).unwrap();
                continue;
            }
            let want = std::fs::read_to_string(&path).unwrap_or_default();
            if want != got {
                failures.push(format!("{} differs (UPDATE_GOLDEN=1 to accept)", path.display()));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        dirs.len() >= 8,
        "expected at least eight scenarios, found {}",
        dirs.len()
    );
}

#[test]
fn deterministic() {
    for dir in std::fs::read_dir(golden_dir()).unwrap().map(|e| e.unwrap().path()) {
        if dir.join("input.yaml").exists() {
            assert_eq!(render_dir(&dir), render_dir(&dir), "{}", dir.display());
        }
    }
}

/// Whether a test that lacks what it needs may skip: only when asked (CALICO_ALLOW_SKIP),
/// so that a CI run without root or tools fails instead of passing untested.
fn may_skip(why: &str) -> bool {
    if std::env::var_os("CALICO_ALLOW_SKIP").is_some() {
        eprintln!("skipped: {why}");
        true
    } else {
        panic!("{why} (scripts/test.sh runs as root and installs the tools; CALICO_ALLOW_SKIP=1 skips)");
    }
}

#[test]
fn nft_accepts_golden() {
    if (!is_root() || !have("nft")) && may_skip("needs root and nft") {
        return;
    }
    for dir in std::fs::read_dir(golden_dir()).unwrap().map(|e| e.unwrap().path()) {
        for (file, args) in [("nft.json", &["-c", "-j", "-f"][..]), ("nft.txt", &["-c", "-f"][..])] {
            let f = dir.join(file);
            if !f.exists() {
                continue;
            }
            let out = Command::new("nft").args(args).arg(&f).output().unwrap();
            assert!(
                out.status.success(),
                "nft {} {}: {}",
                args.join(" "),
                f.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn bird_accepts_golden() {
    if !have("bird") && may_skip("needs bird") {
        return;
    }
    for dir in std::fs::read_dir(golden_dir()).unwrap().map(|e| e.unwrap().path()) {
        let f = dir.join("bird.conf");
        if !f.exists() {
            continue;
        }
        let out = Command::new("bird").args(["-p", "-c"]).arg(&f).output().unwrap();
        assert!(
            out.status.success(),
            "bird -p -c {}: {}{}",
            f.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
