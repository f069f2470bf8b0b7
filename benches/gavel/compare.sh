#!/usr/bin/env bash
# wsched's side of the comparison with Gavel's simulator: replays each trace
# in benches/gavel/traces through wsched on Gavel's cluster (clusters/),
# with Gavel's throughput table and Gavel's model of time (no restart cost,
# no co-location, no spread penalty: every gang fits one node here), and
# prints one TSV row per run: trace, cluster, policy, replay (event-exact, or
# in Gavel's 360 s rounds with --rounds 360), mean JCT (s), jobs completed,
# preemptions. Gavel's own figures for the same traces are in
# gavel-results.tsv (made with gavel-reference.sh).
#
#   benches/gavel/compare.sh            (after cargo build --release and scripts/build-plugins.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
wsched=./target/release/wsched
plugins=./target/plugins
run() { # trace cluster policy [--rounds 360]
    "$wsched" sim --trace "benches/gavel/traces/$1.trace" --cluster "benches/gavel/clusters/$2.yaml" \
        --throughputs gavel --reference-gpu V100 --restart-cost 0 --colocation time-slice \
        --policy "$3" ${4:+"$4" "$5"} -q --json |
        python3 -c 'import json,sys; s=json.load(sys.stdin); s=s.get("summary",s); print("%.1f\t%d\t%d" % (s["jct"]["mean"], s["completed"], s["preemptions"]))'
}
printf 'trace\tcluster\tpolicy\treplay\tmean_jct_s\tcompleted\tpreemptions\n'
for t in gavel-40j-seed4-lam600 gavel-40j-seed8-lam2400-multi gavel-40j-seed0-lam600-multi; do
    for p in builtin-fifo "$plugins/gavel.wasm@mode=agnostic" "$plugins/gavel.wasm@mode=agnostic;reset=0"; do
        printf '%s\tv100x8\t%s\texact\t%s\n' "$t" "${p##*/}" "$(run "$t" v100x8 "$p")"
        printf '%s\tv100x8\t%s\trounds\t%s\n' "$t" "${p##*/}" "$(run "$t" v100x8 "$p" --rounds 360)"
    done
done
for t in gavel-100j-seed1-lam1200 gavel-100j-seed0-lam1800-multi gavel-200j-seed0-lam900 gavel-200j-seed0-lam1800-multi; do
    for p in "$plugins/gavel.wasm@mode=agnostic" "$plugins/gavel.wasm@mode=agnostic;reset=0" "$plugins/gavel.wasm@mode=aware" "$plugins/gavel.wasm@mode=aware;reset=0"; do
        printf '%s\tgavel-4-4-4\t%s\texact\t%s\n' "$t" "${p##*/}" "$(run "$t" gavel-4-4-4 "$p")"
        printf '%s\tgavel-4-4-4\t%s\trounds\t%s\n' "$t" "${p##*/}" "$(run "$t" gavel-4-4-4 "$p" --rounds 360)"
    done
done
