#!/usr/bin/env bash
# Build the Python ports of the reference policies as WebAssembly components:
#   target/plugins/py-fifo.wasm   (plugins/python/src/fifo.py)
#   target/plugins/py-las.wasm    (plugins/python/src/las.py)
#
# Installs componentize-py (pinned) into target/venv-componentize-py on first
# use (needs python3 with venv, and PyPI). Also writes the generated Python
# bindings to target/py-bindings, for editors and type checkers only: the
# component build generates its own from wit/policy.wit, the one source of truth.
# Runnable from any directory; any failure stops it with a one-line reason.
set -euo pipefail

COMPONENTIZE_PY_VERSION=0.25.1

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
target="$repo/target"
venv="$target/venv-componentize-py"
cpy="$venv/bin/componentize-py"

fail() { echo "error: plugins/python/build.sh: $*" >&2; exit 1; }

installed_version() { "$cpy" --version 2>/dev/null | awk '{print $2}'; }

if [[ ! -x "$cpy" || "$(installed_version)" != "$COMPONENTIZE_PY_VERSION" ]]; then
    command -v python3 >/dev/null || fail "python3 not found (needed to install componentize-py)"
    echo "installing componentize-py $COMPONENTIZE_PY_VERSION into $venv"
    mkdir -p "$target"
    python3 -m venv "$venv" \
        || fail "cannot create the venv $venv (python3 -m venv failed; on Debian/Ubuntu install python3-venv)"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "componentize-py==$COMPONENTIZE_PY_VERSION" \
        || fail "pip install componentize-py==$COMPONENTIZE_PY_VERSION failed (is PyPI reachable?)"
    [[ "$(installed_version)" == "$COMPONENTIZE_PY_VERSION" ]] \
        || fail "componentize-py $COMPONENTIZE_PY_VERSION did not install correctly into $venv"
fi

mkdir -p "$target/plugins"
rm -rf "$target/py-bindings"
"$cpy" -d "$repo/wit" -w scheduler bindings "$target/py-bindings" \
    || fail "componentize-py could not generate bindings from wit/policy.wit"

# Build from a copy of src/ under target/: componentize-py's embedded CPython
# writes __pycache__ next to the modules it imports (ignoring
# PYTHONDONTWRITEBYTECODE), and -p on a folder of .py files alone keeps
# anything else (this script, the README) out of the component.
stage="$target/py-src"
rm -rf "$stage"
mkdir -p "$stage"
cp "$here"/src/*.py "$stage"/ || fail "cannot copy plugins/python/src/*.py to $stage"
for policy in fifo las; do
    out="$target/plugins/py-$policy.wasm"
    "$cpy" -d "$repo/wit" -w scheduler componentize "$policy" -p "$stage" -o "$out.tmp" \
        || fail "componentize-py failed to build $policy (plugins/python/src/$policy.py)"
    mv "$out.tmp" "$out"
done
echo "python plugins built: $target/plugins/{py-fifo,py-las}.wasm"
