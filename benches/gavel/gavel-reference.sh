#!/usr/bin/env bash
# Runs Gavel's own simulator (stanford-futuredata/gavel, MIT) on one trace with
# one policy and one cluster spec, and prints the average JCT in seconds on the
# last line of its output.
#
# Usage:
#   gavel-reference.sh GAVEL_DIR TRACE [POLICY] [CLUSTER_SPEC] [options]
#
#   GAVEL_DIR     a checkout of stanford-futuredata/gavel (the folder that holds
#                 scheduler/); nothing is fetched. Tested at commit c4fa400
#                 (2022-01-15).
#   TRACE         a Gavel .trace file (tab-separated; see README.md here)
#   POLICY        fifo (default), max_min_fairness, max_min_fairness_perf, or
#                 any other name of Gavel's utils.get_available_policies()
#   CLUSTER_SPEC  V100:P100:K80 GPU counts (default 8:0:0)
#
# Options:
#   --patch       apply gavel-wsched-switches.patch (next to this script, or
#                 $GAVEL_PATCH) to GAVEL_DIR with `patch -p1` if not yet applied.
#                 On its own it changes no result; it adds the two switches:
#   --gate S      minimum time between allocation resets, in seconds
#                 (Gavel's default 1920; 0 recomputes the allocation at every
#                 round that saw an arrival or a completion). Needs --patch.
#   --fix         fix the multi-GPU step split that fails and then drops
#                 multi-GPU jobs near their end. Needs --patch.
#   --seed N      simulator seed (default 0)
#   --round S     round length, time_per_iteration (default 360)
#   --venv DIR    venv to create/use (default GAVEL_DIR/.venv-wsched)
#   --timeout S   wall-clock limit for the simulation (default 900)
#   --log FILE    keep the simulator's full output there
#
# The venv gets numpy, scipy, cvxpy and ECOS (Gavel's default solver), plus
# what scheduler.py imports at module level even when it only simulates:
# psutil, grpcio (+ grpcio-tools to generate the RPC stubs with `make
# rpc_stubs`), matrix_completion and scikit-learn. Versions are pinned to the
# ones this was tested with (Python 3.11); override with GAVEL_PIP_SPEC.
set -euo pipefail

usage() { sed -n '2,35p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[ $# -ge 2 ] || usage

GAVEL_DIR=$(cd "$1" && pwd); shift
TRACE=$(cd "$(dirname "$1")" && pwd)/$(basename "$1"); shift
POLICY=fifo
SPEC=8:0:0
if [ $# -gt 0 ] && [[ "$1" != --* ]]; then POLICY=$1; shift; fi
if [ $# -gt 0 ] && [[ "$1" != --* ]]; then SPEC=$1; shift; fi

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PATCH_FILE=${GAVEL_PATCH:-$HERE/gavel-wsched-switches.patch}
APPLY_PATCH=0; GATE=""; FIX=0; SEED=0; ROUND=360
VENV="$GAVEL_DIR/.venv-wsched"; TIMEOUT=900; LOG=""
while [ $# -gt 0 ]; do
  case "$1" in
    --patch) APPLY_PATCH=1 ;;
    --gate) GATE=$2; shift ;;
    --fix) FIX=1 ;;
    --seed) SEED=$2; shift ;;
    --round) ROUND=$2; shift ;;
    --venv) VENV=$2; shift ;;
    --timeout) TIMEOUT=$2; shift ;;
    --log) LOG=$2; shift ;;
    -h|--help) usage ;;
    *) echo "unknown option: $1" >&2; usage ;;
  esac
  shift
done

SCHED="$GAVEL_DIR/scheduler"
[ -f "$SCHED/scripts/drivers/simulate_scheduler_with_trace.py" ] || {
  echo "error: $GAVEL_DIR does not look like a Gavel checkout" >&2; exit 1; }
[ -f "$TRACE" ] || { echo "error: no trace $TRACE" >&2; exit 1; }

# 1. venv (created once, reused).
PIP_SPEC=${GAVEL_PIP_SPEC:-"numpy==2.4.6 scipy==1.17.1 cvxpy==1.9.3 ecos==2.0.14 psutil==7.2.2 grpcio==1.85.3 grpcio-tools==1.85.1 protobuf==7.36.2 matrix-completion==0.0.2 scikit-learn==1.9.1"}
if [ ! -x "$VENV/bin/python" ] || [ ! -f "$VENV/.wsched-ok" ]; then
  echo "creating venv $VENV" >&2
  python3 -m venv "$VENV"
  # shellcheck disable=SC2086
  "$VENV/bin/pip" install -q $PIP_SPEC >&2
  touch "$VENV/.wsched-ok"
fi
PY="$VENV/bin/python"

# 2. RPC stubs (scheduler.py imports runtime.rpc even in simulation).
if [ ! -f "$SCHED/runtime/rpc_stubs/common_pb2.py" ]; then
  (cd "$SCHED" && for p in iterator_to_scheduler scheduler_to_worker \
       worker_to_scheduler common enums; do
     "$PY" -m grpc_tools.protoc -Iruntime/protobuf \
       --python_out=runtime/rpc_stubs --grpc_python_out=runtime/rpc_stubs \
       runtime/protobuf/$p.proto; done) >&2
fi

# 3. Patch (optional, idempotent).
patched() { grep -q "fix_multi_gpu_step_split" \
  "$SCHED/scripts/drivers/simulate_scheduler_with_trace.py"; }
if [ $APPLY_PATCH = 1 ] && ! patched; then
  [ -f "$PATCH_FILE" ] || { echo "error: no patch $PATCH_FILE" >&2; exit 1; }
  (cd "$GAVEL_DIR" && patch -p1 --forward < "$PATCH_FILE") >&2
fi
EXTRA=()
if [ -n "$GATE" ] || [ $FIX = 1 ]; then
  patched || { echo "error: --gate/--fix need the patch (--patch)" >&2; exit 1; }
  [ -n "$GATE" ] && EXTRA+=(--minimum_time_between_allocation_resets "$GATE")
  [ $FIX = 1 ] && EXTRA+=(--fix_multi_gpu_step_split)
fi

# 4. Run.
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT
set +e
(cd "$SCHED" && timeout "$TIMEOUT" "$PY" \
   scripts/drivers/simulate_scheduler_with_trace.py \
   -t "$TRACE" -p "$POLICY" -c "$SPEC" --seed "$SEED" \
   --time_per_iteration "$ROUND" "${EXTRA[@]}") > "$OUT" 2>&1
RC=$?
set -e
[ -n "$LOG" ] && cp "$OUT" "$LOG"
if [ $RC -ne 0 ]; then
  tail -20 "$OUT" >&2
  echo "error: simulator exited with $RC (124 = timeout)" >&2
  exit $RC
fi
grep -E "^(Total duration|Number of (completed|dropped)|Cluster utilization)" "$OUT" || true
JCT=$(sed -n 's/^Average job completion time: \([0-9.]*\) seconds.*/\1/p' "$OUT" | head -1)
[ -n "$JCT" ] || { echo "error: no average JCT in the output" >&2; exit 1; }
echo "$JCT"
