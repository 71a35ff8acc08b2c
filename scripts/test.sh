#!/usr/bin/env bash
# Runs every check and test: formatting, clippy, unit tests, whole-flow tests
# (which start real loop devices and tmpfs mounts when run as root). This is
# what CI runs (.ci/run). Ends with one line totalling all test binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all --check
# Tests run the hoard binary with its injected crash points compiled in
# (tests/crash.rs); release builds have none. Clippy sees both builds.
FEATURES=(--features hoard-cli/failpoints)
cargo clippy --workspace --all-targets -q -- -D warnings
cargo clippy --workspace --all-targets -q "${FEATURES[@]}" -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace "${FEATURES[@]}" 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { p += $4; f += $6; s += $8 } END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit $status
