#!/usr/bin/env bash
# Runs every test of calico-docker on this machine: unit tests, golden files, and the
# end-to-end tests on real etcd, BIRD, nftables, dockerd and network-namespace hosts.
# Installs what is missing first (Debian packages; idempotent). Must run as root: the
# end-to-end tests create network namespaces. Each test starts (and stops) its own etcd,
# BIRD and dockerd instances on private ports, sockets and directories.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
. scripts/cargo-env.sh

# Test binaries run one at a time; inside one binary, tests that touch shared kernel
# state serialize themselves (calico_e2e::serial()).
export RUST_BACKTRACE=1
cargo build --workspace --all-targets --locked
cargo test --workspace --locked --no-fail-fast "$@"
# The schema as an editor sees it: the real yaml-language-server over LSP (Node.js).
bash scripts/editor-check.sh
