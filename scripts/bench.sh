#!/usr/bin/env bash
# Runs calico-docker's benchmarks and prints every figure beside its baseline, measured
# in the same invocation, as a ratio (BENCHMARKS.md keeps the latest run's figures, the
# machine, and what each baseline is). Must run as root: the benchmarks make network
# namespaces, load nftables and iptables rulesets into them, and start etcd, BIRD and
# agents on namespace hosts. Installs nothing beyond scripts/install-deps.sh.
#
# Knobs (environment):
#   BENCH_QUICK=1          smaller sizes (1k endpoints only), for a quick look
#   BENCH_LOG_DIR=DIR      keep each benchmark's whole output there (default: a temp dir)
#   BENCH_E2E_ENDPOINTS    local endpoint counts of the agent end-to-end bench (1000,10000)
#   BENCH_FP_ENDPOINTS     endpoint counts of the first-packet bench (0,1000,10000)
#   BENCH_LOAD_ENDPOINTS   endpoint counts of the whole-table load bench (1000,5000,10000)
#
# Heavy parts run under flock /tmp/calico-e2e.lock, as the end-to-end tests do, so they
# never overlap another run's namespaces and agents. The machine may be shared: read
# the ratios, not the absolute figures.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
. scripts/cargo-env.sh
export CARGO_INCREMENTAL=0

if [ "${BENCH_QUICK:-}" = 1 ]; then
    : "${BENCH_E2E_ENDPOINTS:=1000}" "${BENCH_FP_ENDPOINTS:=0,1000}" "${BENCH_LOAD_ENDPOINTS:=1000}"
fi
export BENCH_E2E_ENDPOINTS="${BENCH_E2E_ENDPOINTS:-1000,10000}"
export BENCH_FP_ENDPOINTS="${BENCH_FP_ENDPOINTS:-0,1000,10000}"
export BENCH_LOAD_ENDPOINTS="${BENCH_LOAD_ENDPOINTS:-1000,5000,10000}"
logs="${BENCH_LOG_DIR:-$(mktemp -d /tmp/calico-bench.XXXXXX)}"
mkdir -p "$logs"
lock=/tmp/calico-e2e.lock
started=$(date +%s)

echo "== calico-docker benchmarks, $(date -u '+%Y-%m-%d %H:%M UTC') =="
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo) RAM, kernel $(uname -r), $(nft --version), $(iptables --version)"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg); whole outputs in $logs"

# Builds first (outside the lock): the agent and calicoctl binaries the end-to-end
# benches start (release builds, what users run; the debug ones for the rest), the test
# binaries, and the render bench (release, as cargo bench is).
cargo build --locked -p calico-agent -p calicoctl --bins
cargo build --locked --release -p calico-agent -p calicoctl --bins
cargo test --locked -p calico-e2e --test bench_agent --no-run
cargo test --locked -p calicoctl --test bench_apply --no-run
cargo bench --locked -p calico-render --bench render --no-run

# Runs one benchmark under the lock, keeps its output, prints the lines that carry
# figures (what `filter` keeps).
run() {
    local name=$1 filter=$2
    shift 2
    echo
    echo "## $name"
    local t0=$SECONDS
    if ! flock "$lock" "$@" >"$logs/$name.log" 2>&1; then
        echo "FAILED ($name): see $logs/$name.log"
        tail -n 20 "$logs/$name.log"
        failed=1
    fi
    grep -E "$filter" "$logs/$name.log" || true
    echo "($name took $((SECONDS - t0)) s)"
}
failed=0

# Whole-table load (ours = nft -f text, the floor; JSON; iptables-restore of the
# per-endpoint-chain equivalent) and first-packet latency (no table, ours, iptables).
BENCH_PARTS=load,first-packet run dataplane '^(==|  )' \
    cargo bench --locked -p calico-render --bench render

# Container setup through the agent's plumbing against the same steps as `ip`
# commands; policy apply to enforcement on three hosts.
run agent-plumbing 'BENCH' \
    cargo test --locked -p calico-e2e --test bench_agent -- --ignored --nocapture --test-threads 1 \
    bench_container_setup_latency bench_policy_apply_to_enforced

# calicoctl apply against raw etcd puts of the same bytes in one transaction.
run apply '(N=|ratio|BENCH)' \
    cargo test --locked -p calicoctl --test bench_apply -- --ignored --nocapture --test-threads 1

# One change end to end in the agent (its calico_event_to_commit_seconds) against the
# hand-written nft floor, and the agent's memory per endpoint against the agent idle.
run agent-change 'BENCH' \
    cargo test --locked -p calico-e2e --test bench_agent -- --ignored --nocapture --test-threads 1 \
    bench_change_event_to_commit


echo
echo "== done in $(( $(date +%s) - started )) s; load average after: $(cut -d' ' -f1-3 /proc/loadavg) =="
exit "$failed"
