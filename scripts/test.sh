#!/usr/bin/env bash
# Every test: build the example plugins (the integration tests load them),
# then the whole workspace's tests (host unit and integration tests, the
# SDK's and every plugin's native unit tests), in the release profile that
# the benchmarks and the CLI use, so nothing is compiled twice.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build-plugins.sh
cargo test --release --workspace "$@"
