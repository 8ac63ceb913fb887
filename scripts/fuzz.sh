#!/usr/bin/env bash
# The long fuzz run: the property tests of schema/tests/fuzz.rs (the YAML loader,
# selectors, CIDR/address/port/protocol parsing, the birdc parser) with many more cases
# than `cargo test` runs. Failures are shrunk to a minimal input and kept by proptest in
# schema/tests/fuzz.proptest-regressions, which every later run tries first: commit it.
#
#   scripts/fuzz.sh            # 20000 cases per property (a few minutes)
#   FUZZ_CASES=200000 scripts/fuzz.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/cargo-env.sh
cases=${FUZZ_CASES:-20000}
cargo build --release -p calico-schema --tests --locked -q
start=$(date +%s)
PROPTEST_CASES=$cases cargo test --release -p calico-schema --test fuzz --locked -q -- --test-threads 2
echo "fuzz: $cases cases per property in $(( $(date +%s) - start )) s"
