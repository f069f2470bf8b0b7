#!/usr/bin/env bash
# The GPU checks: on a machine with an NVIDIA GPU and driver, run the GPU
# tests, the service end to end on the GPU (a Wasm LAS policy preempting a
# long job for a short one, an injected device fault, the GPU coming back),
# and the benchmark, whose table is printed last. A few minutes after the
# build.
#
#   scripts/gpu-check.sh                 build here (needs Rust), then check
#   scripts/gpu-check.sh --bundle DIR    build only, and put what the checks
#                                        run into DIR (stripped binaries and
#                                        two plugins), for a GPU machine
#                                        without a Rust toolchain
#   scripts/gpu-check.sh --prebuilt DIR  check with what --bundle put in DIR
#
# Environment: WSCHED_GPU_BENCH_SECONDS (each throughput window, default
# 2); WSCHED_GPU_CHECK_BACKEND=cpu-devices runs only the service part on CPU
# stand-ins (to try this script on a machine with no GPU).
set -euo pipefail
cd "$(dirname "$0")/.."

mode=build
dir=
case "${1:-}" in
    "") ;;
    --bundle) mode=bundle; dir=${2:?"--bundle needs a directory"} ;;
    --prebuilt) mode=prebuilt; dir=${2:?"--prebuilt needs a directory"} ;;
    *) echo "usage: $0 [--bundle DIR | --prebuilt DIR]" >&2; exit 2 ;;
esac

# The executable cargo built for a test or bench target.
executable() { # test|bench name
    local profile=()
    [ "$1" = test ] && profile=(--release) # benches build with the bench profile (release)
    cargo "$1" "${profile[@]}" -p wsched "--$1" "$2" --no-run --message-format=json 2>/dev/null |
        python3 -c '
import json, sys
name = sys.argv[1]
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == name:
        print(m["executable"])
' "$2" | tail -1
}

if [ "$mode" != prebuilt ]; then
    ./scripts/build-plugins.sh >/dev/null
    cargo build --release -p wsched --bin wsched
    wsched=target/release/wsched
    tests=$(executable test devices)
    bench=$(executable bench gpu)
    plugins=target/plugins
    [ -x "$tests" ] && [ -x "$bench" ] || { echo "error: cannot find the built test and bench programs" >&2; exit 1; }
fi
if [ "$mode" = bundle ]; then
    mkdir -p "$dir"
    objcopy --strip-all "$wsched" "$dir/wsched"
    objcopy --strip-all "$tests" "$dir/devices-tests"
    objcopy --strip-all "$bench" "$dir/gpu-bench"
    cp "$plugins/las.wasm" "$plugins/fifo.wasm" "$dir/"
    du -sh "$dir"
    exit 0
fi
if [ "$mode" = prebuilt ]; then
    wsched=$dir/wsched tests=$dir/devices-tests bench=$dir/gpu-bench plugins=$dir
fi

echo "== the machine"
nvidia-smi --query-gpu=name,uuid,memory.total,driver_version --format=csv,noheader 2>/dev/null ||
    echo "(nvidia-smi not found)"

# cudarc opens libnvrtc by its usual names; a CUDA 13 toolkit or the pip
# wheels may only have libnvrtc.so.13, so give it a name cudarc tries.
if ! ldconfig -p 2>/dev/null | grep -q 'libnvrtc\.so '; then
    found=$(find /usr/local /opt /usr/lib -name 'libnvrtc.so*' -not -name '*builtins*' 2>/dev/null | sort | tail -1 || true)
    if [ -n "$found" ]; then
        shim=$(mktemp -d)
        ln -sf "$found" "$shim/libnvrtc.so"
        export LD_LIBRARY_PATH="$shim:$(dirname "$found")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        echo "NVRTC: $found"
    else
        echo "warning: no libnvrtc.so found; the checks will say what is missing" >&2
    fi
fi

status=0

backend=${WSCHED_GPU_CHECK_BACKEND:-cuda}
gflops=()
if [ "$backend" = cpu-devices ]; then
    gflops=(--gflops-per-iteration 0.0005)
else
    echo
    echo "== GPU tests (tests/devices.rs: on_cuda in this process, on_cuda_workers and faults in worker processes)"
    WSCHED_BIN=$wsched timeout 300 "$tests" --ignored --test-threads 4 || status=1
fi

echo
echo "== the service on the GPU: wsched serve --backend $backend --policy las.wasm (1 GPU-second threshold)"
state=$(mktemp -d)
"$wsched" serve --backend "$backend" --state-dir "$state" --listen 127.0.0.1:0 --no-metrics \
    --policy "$plugins/las.wasm" --config thresholds=1 >"$state/serve.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 300); do [ -s "$state/serve.addr" ] && break; sleep 0.1; done
head -2 "$state/serve.log"
w() { "$wsched" --state-dir "$state" "$@"; }
id() { python3 -c 'import json,sys; print(json.load(sys.stdin)["ids"][0])'; }
wait_done() { # ids...
    for _ in $(seq 300); do
        local live
        live=$(w job list -o json | python3 -c '
import json, sys
want = set(map(int, sys.argv[1:]))
print(sum(1 for j in json.load(sys.stdin) if j["id"] in want and j["state"] not in ("finished", "failed")))
' "$@")
        [ "$live" = 0 ] && return 0
        sleep 0.2
    done
    echo "error: jobs $* did not end" >&2
    return 1
}
if [ -s "$state/serve.addr" ]; then
    w gpu list
    # The long job holds every GPU, so the short one can only run if the
    # policy preempts it.
    gpus=$(w gpu list -o json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["gpus"]))')
    long=$(w job submit --name long --gpus "$gpus" --seconds 60 --iterations 1500 "${gflops[@]}" -o json | id)
    sleep 1.5
    short=$(w job submit --name short --seconds 60 --iterations 100 "${gflops[@]}" -o json | id)
    wait_done "$long" "$short" || status=1
    fault=$(printf 'apiVersion: wsched.dev/v1\nkind: Job\nmetadata: {name: faulty}\nspec:\n  gpus: 1\n  iterations: 100\n  synthetic: {seconds: 60, faultAtIteration: 5%s}\n' "${gflops:+, gflopsPerIteration: ${gflops[1]}}" |
        w job submit -f - -o json | id)
    wait_done "$fault" || status=1
    after=$(w job submit --name after-the-fault --seconds 60 --iterations 100 --memory 1Gi "${gflops[@]}" -o json | id)
    wait_done "$after" || status=1
    w job list
    w job list -o json | python3 -c '
import json, sys
jobs = {j["name"]: j for j in json.load(sys.stdin)}
problems = []
def expect(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        problems.append(what)
long, short, faulty, after = jobs["long"], jobs["short"], jobs["faulty"], jobs["after-the-fault"]
expect(long["state"] == "finished" and long["iterations_done"] == 1500, "the long job ran all 1500 iterations")
expect(long["preemptions"] >= 1, "LAS preempted the long job for the short one (%d preemptions)" % long["preemptions"])
expect(short["state"] == "finished" and short["end_time"] < long["end_time"], "the short job finished first")
expect(faulty["state"] == "failed" and any(s in (faulty["failure"] or "") for s in ("ILLEGAL_ADDRESS", "illegal memory access")), "the faulting job failed with the CUDA error: %r" % faulty["failure"])
expect(after["state"] == "finished", "the GPU came back: a job after the fault finished")
expect(all(j["iteration_time_seconds"] for j in (long, short, after)), "iteration times reached the model")
sys.exit(1 if problems else 0)
' || status=1
    w gpu list
else
    echo "error: the server did not start:" >&2
    cat "$state/serve.log" >&2
    status=1
fi
kill "$server" 2>/dev/null || true
wait "$server" 2>/dev/null || true
grep -E "WARN|ERROR" "$state/serve.log" | tail -5 || true

if [ "$backend" = cuda ]; then
    echo
    echo "== benchmark (host/benches/gpu.rs)"
    WSCHED_BIN=$wsched timeout 300 "$bench" || status=1
fi
exit $status
