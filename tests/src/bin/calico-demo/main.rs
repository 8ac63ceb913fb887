//! The main job: the seed's two-host demo, for real, on this machine.
//!
//! By default on Docker (docker.rs): two namespace hosts, each with its own dockerd,
//! agent and BIRD, and the seed's five containers started with `docker run`. `--netns`
//! runs the older demo with namespace workloads (netns.rs). `--keep` leaves the Docker
//! demo running and prints how to explore it and how to tear it down.

mod docker;
mod netns;

const USAGE: &str = "usage: calico-demo [--netns] [--keep] [--docker-components]
  (default)            the seed's demo on Docker: two hosts with a dockerd each, five containers
  --netns              the same demo with network-namespace workloads instead of Docker
  --keep               leave the Docker demo running; print how to explore it and tear it down
  --docker-components  run the agents as containers too (calicoctl node --docker, images
                       from scripts/build-images.sh); not with --keep";

fn main() -> anyhow::Result<()> {
    let (mut netns, mut keep, mut components) = (false, false, false);
    for a in std::env::args().skip(1) {
        match a.as_str() {
            "--netns" => netns = true,
            "--keep" => keep = true,
            "--docker-components" => components = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => anyhow::bail!("unknown argument '{other}'\n{USAGE}"),
        }
    }
    if netns && (keep || components) {
        anyhow::bail!("--keep and --docker-components are for the Docker demo, not --netns\n{USAGE}");
    }
    if keep && components {
        // The agents in containers reach etcd through this process (its forward into
        // each host): it cannot leave them running.
        anyhow::bail!("--keep does not go with --docker-components\n{USAGE}");
    }
    if netns {
        netns::run()
    } else {
        docker::run(keep, components)
    }
}
