#!/usr/bin/env bash
# The long fuzz run: the property tests with many more cases than `cargo test` runs:
#   schema/tests/fuzz.rs         the YAML loader, selectors, CIDR/address/port/protocol
#                                parsing, the birdc parser
#   agent/tests/fuzz_plugin.rs   the Docker plugin request bodies, the CALICO_* env parser
#   store/tests/fuzz_values.rs   the etcd values: resources, status JSON, IPAM blocks/handles
# Failures are shrunk to a minimal input and kept by proptest in
# <crate>/tests/<file>.proptest-regressions, which every later run tries first: commit it.
#
#   scripts/fuzz.sh            # 20000 cases per property (a few minutes)
#   FUZZ_CASES=200000 scripts/fuzz.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/cargo-env.sh
cases=${FUZZ_CASES:-20000}
suites=("calico-schema fuzz" "calico-agent fuzz_plugin" "calico-store fuzz_values")
for s in "${suites[@]}"; do
    set -- $s
    cargo build --release -p "$1" --test "$2" --locked -q
done
start=$(date +%s)
for s in "${suites[@]}"; do
    set -- $s
    t=$(date +%s)
    PROPTEST_CASES=$cases cargo test --release -p "$1" --test "$2" --locked -q -- --test-threads 2
    echo "fuzz: $1 $2: $cases cases per property in $(( $(date +%s) - t )) s"
done
echo "fuzz: $cases cases per property in $(( $(date +%s) - start )) s"
