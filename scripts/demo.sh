#!/usr/bin/env bash
# The main job: the seed's GettingStarted on Docker, on this machine, for real. Starts a
# private etcd and two hosts (network namespaces on a bridge), each with its own dockerd,
# calico-node agent and BIRD; runs the seed's five containers with `docker run` (some
# through the calico network driver, some the seed's way with CALICO_IP), puts them in
# groups A_C_E, B and D and prints who can reach whom, measured with pings from inside
# the containers, next to what the groups allow. Everything it creates is removed at the
# end. Needs root (network namespaces, dockerd).
#
#   scripts/demo.sh           the Docker demo
#   scripts/demo.sh --keep    leave it running; prints how to explore it and tear it down
#   scripts/demo.sh --down    tear down a demo left running with --keep
#   scripts/demo.sh --netns   the older demo: namespace workloads instead of containers
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--down" ]; then
    if [ -f /run/calico-demo/down.sh ]; then
        exec sh /run/calico-demo/down.sh
    fi
    echo "no demo left running (no /run/calico-demo/down.sh)"
    exit 0
fi
bash scripts/install-deps.sh
. scripts/cargo-env.sh
cargo build --workspace --locked --bins
exec target/debug/calico-demo "$@"
