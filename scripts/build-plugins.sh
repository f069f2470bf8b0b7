#!/usr/bin/env bash
# Build the example policy plugins as WebAssembly components into
# target/plugins/NAME.wasm (what the README, tests and benchmarks use).
#
#   scripts/build-plugins.sh         the Rust plugins (needs only rustup)
#   scripts/build-plugins.sh --all   also the C, Python and JavaScript ports
#                                    (c-*.wasm, py-*.wasm, js-*.wasm); each
#                                    language's build.sh installs its own
#                                    toolchain and fails loudly if it cannot
set -euo pipefail
cd "$(dirname "$0")/.."

all=false
case "${1:-}" in
    "") ;;
    --all) all=true ;;
    *) echo "usage: $0 [--all]" >&2; exit 2 ;;
esac

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
    rustup target add wasm32-wasip2 || { echo "error: cannot install the wasm32-wasip2 Rust target" >&2; exit 1; }
fi

# Crate names use dashes (plugins/gandiva_fair is wsched-gandiva-fair); the
# component file, like the Rust library, uses underscores.
plugins=(fifo sjf tiresias gandiva gavel hostile las themis gandiva_fair)
args=()
for p in "${plugins[@]}"; do args+=(-p "wsched-${p//_/-}"); done
cargo build --profile plugin --target wasm32-wasip2 "${args[@]}"

target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
mkdir -p "$target_dir/plugins"
for p in "${plugins[@]}"; do
    cp "$target_dir/wasm32-wasip2/plugin/wsched_$p.wasm" "$target_dir/plugins/$p.wasm"
done
echo "plugins built: $target_dir/plugins/{$(IFS=,; echo "${plugins[*]}")}.wasm"

if $all; then
    for language in c python js; do
        echo "== $language plugins"
        "plugins/$language/build.sh" || { echo "error: building the $language plugins failed (see above)" >&2; exit 1; }
    done
fi
