#!/usr/bin/env bash
# Every test: build the example plugins (the integration tests load them),
# then the whole workspace's tests (host unit and integration tests, the
# SDK's and every plugin's native unit tests), in the release profile that
# the benchmarks and the CLI use, so nothing is compiled twice. Ends with
# one line totalling every test binary: "N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build-plugins.sh --all
# The Python example client (tests/service.rs runs it): grpcio and stubs.
./examples/python/setup.sh
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --release --workspace "$@" 2>&1 | tee "$log" || status=$?
passed=$(grep -E '^test result:' "$log" | awk '{n += $4} END {print n + 0}')
failed=$(grep -E '^test result:' "$log" | awk '{n += $6} END {print n + 0}')
echo
echo "$passed passed, $failed failed"
exit "$status"
