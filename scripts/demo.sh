#!/usr/bin/env bash
# The main job on the bundled default: build the example plugins and the
# host, then replay the bundled Philly trace through the Tiresias plugin on
# 64 GPUs. Results (table, summary.json, jobs.csv, plot.svg) go to out/.
# Extra arguments are passed to `wsched sim` (e.g. --policy target/plugins/gavel.wasm).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build-plugins.sh
cargo build --release -p wsched
policy=target/plugins/tiresias.wasm
gpus=64
for arg in "$@"; do
    [ "$arg" = "--policy" ] && policy=""
    [ "$arg" = "--cluster" ] || [ "$arg" = "--gpus" ] && gpus=""
done
exec ./target/release/wsched sim \
    --trace examples/traces/philly-11cb48.csv \
    ${gpus:+--gpus "$gpus"} \
    ${policy:+--policy "$policy"} \
    --out out \
    "$@"
