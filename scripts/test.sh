#!/usr/bin/env bash
# Runs every check and test: formatting, clippy, unit tests, whole-flow tests
# (which start real loop devices and tmpfs mounts when run as root). This is
# what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets -q -- -D warnings
cargo test --workspace
