#!/usr/bin/env bash
# Build the C policies as WebAssembly components:
#   target/plugins/c-fifo.wasm and target/plugins/c-las.wasm
#
# Installs what is missing first: clang, lld, wasi-libc and compiler-rt for
# wasm32 from Debian/Ubuntu apt; wit-bindgen (C bindings from wit/) and
# wasm-tools (core module -> component) with cargo into target/tools.
# The bindings are generated from wit/ on every build (into target/c-build),
# never committed: wit/policy.wit stays the one source of truth.
#
# Runnable from any directory. Any failing step stops the build with a
# one-line "error: ..." naming the step.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
src="$repo/plugins/c"
build="$repo/target/c-build"
tools="$repo/target/tools"
out="$repo/target/plugins"
policies=(fifo las)

# Pinned tool versions. wit-bindgen is the version the Rust SDK uses; the
# generated C API (names, ownership) can change between releases.
WIT_BINDGEN_VERSION=0.61.1
WASM_TOOLS_VERSION=1.263.0
APT_PACKAGES=(clang lld wasi-libc libclang-rt-dev-wasm32)

die() {
    echo "error: $*" >&2
    exit 1
}

# ---- C toolchain (apt) -------------------------------------------------

# Can clang build and link a wasm32-wasi module that uses libc (malloc,
# strtod) and compiler-rt (strtod needs the long double builtins)?
probe_c_toolchain() {
    command -v clang >/dev/null 2>&1 || return 1
    command -v wasm-ld >/dev/null 2>&1 || return 1
    local dir
    dir=$(mktemp -d)
    cat >"$dir/probe.c" <<'EOF'
#include <stdlib.h>
__attribute__((export_name("probe"))) double probe(const char *s) {
    char *p = malloc(8);
    double d = strtod(s, 0);
    free(p);
    return d;
}
EOF
    local ok=0
    clang --target=wasm32-wasi -O2 -nostartfiles -Wl,--no-entry "$dir/probe.c" -lc-printscan-long-double \
        -o "$dir/probe.wasm" \
        >"$dir/log" 2>&1 || ok=1
    rm -rf "$dir"
    return $ok
}

if ! probe_c_toolchain; then
    command -v apt-get >/dev/null 2>&1 ||
        die "no working clang/wasm-ld/wasi-libc for wasm32-wasi, and no apt-get to install ${APT_PACKAGES[*]}"
    sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || die "installing ${APT_PACKAGES[*]} needs root (or sudo)"
        sudo=(sudo)
    fi
    echo "== installing ${APT_PACKAGES[*]} (apt)"
    # Update the package lists only when an install from the current ones fails.
    if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "${APT_PACKAGES[@]}"; then
        "${sudo[@]}" apt-get update || die "apt-get update failed"
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "${APT_PACKAGES[@]}" ||
            die "apt-get install ${APT_PACKAGES[*]} failed"
    fi
    probe_c_toolchain ||
        die "clang cannot build a wasm32-wasi module even after installing ${APT_PACKAGES[*]}"
fi

# ---- wit-bindgen and wasm-tools (cargo, into target/tools) -------------

# install_tool CRATE VERSION BINARY [cargo install flags...]
# Skipped when target/tools/bin/BINARY already reports VERSION.
install_tool() {
    local crate=$1 version=$2 bin=$3
    shift 3
    if "$tools/bin/$bin" --version 2>/dev/null | grep -qF " $version"; then
        return 0
    fi
    command -v cargo >/dev/null 2>&1 || die "cargo is needed to install $crate $version (install rustup)"
    echo "== installing $crate $version into target/tools (cargo, a few minutes)"
    cargo install --locked --root "$tools" "$@" "$crate@$version" ||
        die "cargo install $crate@$version failed"
    "$tools/bin/$bin" --version >/dev/null 2>&1 || die "$crate $version installed but $tools/bin/$bin does not run"
}

# Only the features used here: the C generator; component, print and
# validate subcommands. Each cuts the build time of the tool by minutes.
install_tool wit-bindgen-cli "$WIT_BINDGEN_VERSION" wit-bindgen --no-default-features --features c
install_tool wasm-tools "$WASM_TOOLS_VERSION" wasm-tools --no-default-features \
    --features component,print,validate,parse,objdump
wit_bindgen="$tools/bin/wit-bindgen"
wasm_tools="$tools/bin/wasm-tools"

# ---- bindings -----------------------------------------------------------

rm -rf "$build/bindings"
mkdir -p "$build/bindings" "$out"
"$wit_bindgen" c "$repo/wit" --world scheduler --out-dir "$build/bindings" >"$build/wit-bindgen.log" 2>&1 ||
    { cat "$build/wit-bindgen.log" >&2; die "wit-bindgen c could not generate bindings from $repo/wit"; }

# ---- compile, link, componentize ---------------------------------------

# -ffp-contract=off: never fuse a*b+c into one rounding; the ports must
#   round exactly as the Rust policy does.
# -nostartfiles -Wl,--no-entry: a library-like core module with no _start
#   or _initialize (none of this code needs constructors); the exports are
#   the ones the bindings mark with export_name.
# -lc-printscan-long-double: wasi-libc's default strtod object also holds
#   strtold, which without this library prints a warning to stderr, and so
#   drags stdio (and WASI fd_write/fd_seek/fd_close imports) into the
#   module. With it, las.c's use of strtod imports nothing.
cflags=(--target=wasm32-wasi -std=c11 -O2 -ffp-contract=off -Wall -Wextra -Werror)
ldflags=(-nostartfiles -Wl,--no-entry -Wl,--strip-all -lc-printscan-long-double)

# The generated file is compiled without -Wextra/-Werror: its warnings are
# not ours to fix.
clang --target=wasm32-wasi -std=c11 -O2 -ffp-contract=off -I "$build/bindings" \
    -c "$build/bindings/scheduler.c" -o "$build/scheduler.o" ||
    die "clang failed to compile the generated bindings (scheduler.c)"

for p in "${policies[@]}"; do
    core="$build/$p.core.wasm"
    component="$build/c-$p.wasm"
    clang "${cflags[@]}" -I "$build/bindings" -I "$src" -c "$src/$p.c" -o "$build/$p.o" ||
        die "clang failed to compile plugins/c/$p.c"
    clang "${cflags[@]}" "$build/$p.o" "$build/scheduler.o" "$build/bindings/scheduler_component_type.o" \
        "${ldflags[@]}" -o "$core" ||
        die "wasm-ld failed to link the $p core module"
    # The host accepts only WASI p2 and wsched imports. wasi-libc would
    # import WASI preview1, which needs an adapter; these policies need no
    # WASI at all, so the core module must import none.
    wat=$("$wasm_tools" print "$core") || die "wasm-tools print cannot read the $p core module"
    wasi_imports=$(grep -o '(import "wasi[^"]*" "[^"]*"' <<<"$wat" | tr '\n' ' ' || true)
    [ -z "$wasi_imports" ] ||
        die "the $p core module imports WASI preview1 (libc I/O crept in; no adapter is used): $wasi_imports"
    grep -q '(import "wsched:policy/host@' <<<"$wat" ||
        die "the $p core module imports nothing from wsched:policy/host (bindings not linked?)"
    "$wasm_tools" component new "$core" -o "$component" ||
        die "wasm-tools component new failed for $p"
    "$wasm_tools" validate "$component" || die "wasm-tools validate rejected c-$p.wasm"
    cp "$component" "$out/c-$p.wasm"
    echo "built $out/c-$p.wasm ($(wc -c <"$out/c-$p.wasm") bytes)"
done
