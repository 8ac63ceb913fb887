#!/usr/bin/env bash
# The main job: the seed's two-host demo on this machine, for real. Starts a private
# etcd, two namespace hosts with a calico-node agent and BIRD each, applies examples/,
# creates five workloads and prints who can reach whom, measured with real packets.
# Everything it creates is removed at the end. Needs root (network namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
. scripts/cargo-env.sh
cargo build --workspace --locked --bins
exec target/debug/calico-demo
