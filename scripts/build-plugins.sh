#!/usr/bin/env bash
# Build the example policy plugins as WebAssembly components and copy them
# to target/plugins/NAME.wasm (what the README, tests and benchmarks use).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
    rustup target add wasm32-wasip2 || { echo "error: cannot install the wasm32-wasip2 Rust target" >&2; exit 1; }
fi

plugins=(fifo sjf tiresias gandiva gavel hostile las)
args=()
for p in "${plugins[@]}"; do args+=(-p "wsched-$p"); done
cargo build --profile plugin --target wasm32-wasip2 "${args[@]}"

target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
mkdir -p "$target_dir/plugins"
for p in "${plugins[@]}"; do
    cp "$target_dir/wasm32-wasip2/plugin/wsched_$p.wasm" "$target_dir/plugins/$p.wasm"
done
echo "plugins built: $target_dir/plugins/{$(IFS=,; echo "${plugins[*]}")}.wasm"
