#!/usr/bin/env bash
# Every test: build the example plugins (the integration tests load them),
# then the whole workspace's tests (host unit and integration tests, the
# SDK's and every plugin's native unit tests), in the release profile that
# the benchmarks and the CLI use, so nothing is compiled twice. Ends with
# one line totalling every test binary: "N passed, N failed".
#
#   scripts/test.sh [CARGO TEST ARGS]           everything (what CI runs)
#   scripts/test.sh --quick [CARGO TEST ARGS]   the Rust suite only: no C,
#       Python or JavaScript toolchain is installed, and the tests that need
#       them (the language ports, `policy check` over every example, the
#       Python example client) are skipped, and said to be.
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0
if [[ "${1:-}" == "--quick" ]]; then
    quick=1
    shift
fi
skips=()
if ((quick)); then
    ./scripts/build-plugins.sh
    skips=(-- --skip c_ports_match_rust --skip python_ports_match_rust --skip javascript_ports_match_rust
        --skip every_example_plugin_passes_policy_check --skip the_python_example_client_submits_swaps_and_watches)
    echo "quick: skipping the C, Python and JavaScript ports, policy check over every example and the Python client"
else
    ./scripts/build-plugins.sh --all
    # The Python example client (tests/service.rs runs it): grpcio and stubs.
    ./examples/python/setup.sh
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --release --workspace "$@" "${skips[@]}" 2>&1 | tee "$log" || status=$?
passed=$(grep -E '^test result:' "$log" | awk '{n += $4} END {print n + 0}')
failed=$(grep -E '^test result:' "$log" | awk '{n += $6} END {print n + 0}')
echo
echo "$passed passed, $failed failed"
exit "$status"
