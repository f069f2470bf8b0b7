#!/usr/bin/env bash
# Build the JavaScript policies as WebAssembly components:
#   plugins/js/fifo.js -> target/plugins/js-fifo.wasm
#   plugins/js/las.js  -> target/plugins/js-las.wasm
# against the one WIT contract, <repo>/wit (never a copy of it).
#
# Needs Node.js >= 18 and npm; the first run installs the pinned tools
# (package-lock.json) into plugins/js/node_modules. Runnable from any cwd.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
wit="$root/wit"
out="$root/target/plugins"

fail() {
  echo "plugins/js/build.sh: $*" >&2
  exit 1
}

command -v node >/dev/null 2>&1 || fail "node not found (install Node.js >= 18)"
command -v npm >/dev/null 2>&1 || fail "npm not found (install Node.js >= 18 with npm)"
[[ -f "$wit/policy.wit" ]] || fail "WIT contract not found at $wit/policy.wit"

cd "$here"
if [[ ! -d node_modules ]]; then
  echo "plugins/js: installing the pinned build tools (npm ci)..." >&2
  npm ci --no-audit --no-fund --loglevel=error >&2 || fail "npm ci failed in plugins/js"
fi

componentize="$here/node_modules/@bytecodealliance/componentize-js/src/cli.js"
jco="$here/node_modules/@bytecodealliance/jco/dist/jco.js"
[[ -f "$componentize" ]] || fail "componentize-js missing from node_modules (delete plugins/js/node_modules and rerun)"
[[ -f "$jco" ]] || fail "jco missing from node_modules (delete plugins/js/node_modules and rerun)"
# componentize-js imports preview2-shim without declaring it (package.json pins it).
[[ -d "$here/node_modules/@bytecodealliance/preview2-shim" ]] \
  || fail "@bytecodealliance/preview2-shim missing from node_modules (delete plugins/js/node_modules and rerun)"

mkdir -p "$out" || fail "cannot create $out"

for policy in fifo las; do
  wasm="$out/js-$policy.wasm"
  rm -f "$wasm"
  echo "plugins/js: componentizing $policy.js -> target/plugins/js-$policy.wasm" >&2
  # StarlingMonkey (SpiderMonkey) backend, all optional WASI features off:
  # the host links WASI with an empty context and refuses other imports, and
  # a policy needs no stdio, clocks, randomness or HTTP. Without them the
  # component imports nothing but the wsched interfaces.
  node "$componentize" "$here/$policy.js" \
    --wit "$wit" --world-name scheduler \
    --disable stdio random clocks http fetch-event \
    -o "$wasm" >&2 || fail "componentize-js failed on $policy.js"
  [[ -s "$wasm" ]] || fail "componentize-js wrote no component for $policy.js"

  # The host refuses imports outside WASI 0.2 (wasi:http is not linked) and
  # wsched:policy: catch one here rather than at load time.
  imports="$(node "$jco" wit "$wasm" | sed -n 's/^ *import \([^;]*\);.*/\1/p')" \
    || fail "jco wit could not read $wasm"
  stray="$(grep -v -E '^(wsched:policy|wasi:(cli|io|clocks|random|filesystem|sockets))/' <<<"$imports" || true)"
  [[ -z "$stray" ]] || fail "js-$policy.wasm imports what the host refuses: $(tr '\n' ' ' <<<"$stray")"
done

echo "plugins/js: built $out/js-fifo.wasm and $out/js-las.wasm" >&2
