//! The main job itself (`calico-demo`, what `scripts/demo.sh` runs) with `--keep`: both
//! measured matrices equal what the groups allow, everything is left running (the
//! containers answer `docker exec`), and the teardown script it wrote removes all of it.

use std::path::Path;
use std::process::Command;

use calico_e2e::cluster::bin;
use calico_e2e::docker::available;
use calico_e2e::serial;

const KEEP: &str = "/run/calico-demo";

/// Runs the teardown script if the test stops half-way.
struct Down;

impl Drop for Down {
    fn drop(&mut self) {
        if Path::new(KEEP).join("down.sh").exists() {
            let _ = Command::new("sh").arg(format!("{KEEP}/down.sh")).output();
        }
    }
}

fn netns_list() -> String {
    calico_e2e::sh(&["ip", "netns", "list"]).unwrap_or_default()
}

#[test]
fn the_docker_demo_kept_running_and_torn_down() {
    if !available() {
        return;
    }
    let _g = serial();
    assert!(
        !Path::new(KEEP).join("down.sh").exists(),
        "a demo kept with --keep is running on this machine: `scripts/demo.sh --down` first"
    );
    let _down = Down;
    let out = Command::new(bin("calico-demo"))
        .arg("--keep")
        .output()
        .expect("run calico-demo");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        text.contains("6 of 20 ordered pairs reach each other, exactly as the groups say"),
        "{text}"
    );
    assert!(
        text.contains("12 of 20 ordered pairs reach each other, exactly as the groups say"),
        "{text}"
    );
    assert!(text.contains("scripts/demo.sh --down"), "{text}");

    // Left running: host1's namespace, its dockerd and containers, the agents.
    let host1 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("ip netns exec "))
        .and_then(|l| l.split_whitespace().next())
        .map(str::to_string)
        .expect("the printed host1 namespace");
    assert!(netns_list().contains(&host1));
    let env = std::fs::read_to_string(format!("{KEEP}/env")).unwrap();
    let sock = env
        .split_whitespace()
        .find(|w| w.starts_with("unix://"))
        .map(str::to_string)
        .expect("docker1's socket in the env file");
    let ps = Command::new("docker")
        .args(["-H", &sock, "ps", "--format", "{{.Names}}"])
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(&ps.stdout);
    for n in ["workload-A", "workload-B", "workload-C"] {
        assert!(names.contains(n), "{n} not running on host1: {names}");
    }
    let e_ip = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("docker1 exec workload-A ping -c 2 "))
        .and_then(|l| l.split_whitespace().next())
        .map(str::to_string)
        .expect("E's address in the printed commands");
    let ping = Command::new("docker")
        .args(["-H", &sock, "exec", "workload-A", "ping", "-c", "1", "-W", "2", &e_ip])
        .status()
        .unwrap();
    assert!(
        ping.success(),
        "the kept demo does not answer: A cannot ping E ({e_ip})"
    );

    // Torn down: the namespace, dockerd's socket and the keep directory are gone.
    let down = Command::new("sh").arg(format!("{KEEP}/down.sh")).output().unwrap();
    let said = String::from_utf8_lossy(&down.stdout);
    assert!(down.status.success() && said.contains("everything removed"), "{said}");
    assert!(!netns_list().contains(&host1), "{}", netns_list());
    let sock_path = sock.trim_start_matches("unix://");
    assert!(!Path::new(sock_path).exists(), "{sock_path} left behind");
    assert!(!Path::new(KEEP).exists());
}
