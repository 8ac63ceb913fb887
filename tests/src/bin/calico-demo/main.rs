//! The main job: the seed's two-host demo, for real, on this machine.
//!
//! By default on Docker (docker.rs): two namespace hosts, each with its own dockerd,
//! agent and BIRD, and the seed's five containers started with `docker run`. `--netns`
//! runs the older demo with namespace workloads (netns.rs). `--keep` leaves the Docker
//! demo running and prints how to explore it and how to tear it down.

mod docker;
mod netns;

const USAGE: &str = "usage: calico-demo [--netns] [--keep]
  (default)  the seed's demo on Docker: two hosts with a dockerd each, five containers
  --netns    the same demo with network-namespace workloads instead of Docker
  --keep     leave the Docker demo running; print how to explore it and tear it down";

fn main() -> anyhow::Result<()> {
    let (mut netns, mut keep) = (false, false);
    for a in std::env::args().skip(1) {
        match a.as_str() {
            "--netns" => netns = true,
            "--keep" => keep = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => anyhow::bail!("unknown argument '{other}'\n{USAGE}"),
        }
    }
    match (netns, keep) {
        (true, true) => anyhow::bail!("--keep is for the Docker demo, not --netns\n{USAGE}"),
        (true, false) => netns::run(),
        (false, keep) => docker::run(keep),
    }
}
