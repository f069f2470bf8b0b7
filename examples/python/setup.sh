#!/usr/bin/env bash
# Set up the Python example client: a virtual environment with grpcio in
# target/venv-grpc and stubs generated from proto/wsched/v1/scheduler.proto in
# target/python-stubs (both under target/, never committed).
#
#   examples/python/setup.sh                 then
#   target/venv-grpc/bin/python examples/python/client.py --help
#
# Idempotent: a second run skips pip when requirements.txt (and the Python
# version) is unchanged and skips protoc when the proto is unchanged. PYTHON picks the interpreter that
# creates the venv (default python3).
set -euo pipefail
cd "$(dirname "$0")/../.."   # the repository root

die() { echo "setup.sh: error: $*" >&2; exit 1; }

python=${PYTHON:-python3}
venv=target/venv-grpc
stubs=target/python-stubs
reqs=examples/python/requirements.txt
proto=proto/wsched/v1/scheduler.proto

command -v "$python" >/dev/null || die "no $python on PATH (set PYTHON=/path/to/python3)"
[ -f "$proto" ] || die "$proto not found"

# A stamp holds a hash of what the step was run from; matching stamp = done.
hash_of() { cat "$@" | sha256sum | cut -d' ' -f1; }

# 1. The venv and its packages.
req_hash=$(hash_of "$reqs"; "$python" -c 'import sys; print(sys.version)')
if [ "$(cat "$venv/.requirements.stamp" 2>/dev/null)" != "$req_hash" ]; then
    # New, changed or half-made: start from a clean venv.
    rm -rf "$venv"
    "$python" -m venv "$venv" || die "creating the virtual environment $venv with $python failed (on Debian/Ubuntu: apt-get install python3-venv)"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$reqs" \
        || die "pip install -r $reqs into $venv failed"
    echo "$req_hash" > "$venv/.requirements.stamp"
fi

# 2. The stubs. Generated into a scratch folder and moved into place, so an
# interrupted run never leaves half a package behind.
stub_hash=$(hash_of "$proto" "$venv/.requirements.stamp")
if [ ! -f "$stubs/wsched/v1/scheduler_pb2_grpc.py" ] || [ "$(cat "$stubs/.proto.stamp" 2>/dev/null)" != "$stub_hash" ]; then
    tmp="$stubs.tmp"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    "$venv/bin/python" -m grpc_tools.protoc -I proto \
        --python_out="$tmp" --grpc_python_out="$tmp" --pyi_out="$tmp" "$proto" \
        || die "generating stubs from $proto with grpc_tools.protoc failed"
    # protoc writes modules only; the folders become packages so that
    # `from wsched.v1 import scheduler_pb2, scheduler_pb2_grpc` works.
    touch "$tmp/wsched/__init__.py" "$tmp/wsched/v1/__init__.py"
    echo "$stub_hash" > "$tmp/.proto.stamp"
    rm -rf "$stubs"
    mv "$tmp" "$stubs"
fi

echo "ready: $venv/bin/python examples/python/client.py --help   (stubs in $stubs)"
