#!/usr/bin/env bash
# Runs the BENCHMARKS.md series with release binaries and writes one JSON
# report per run into OUT (default bench-results/), then prints the tables.
#   cargo build --release -p opc-loadgen -p collector-daemon
#   loadgen/scripts/bench-curve.sh [OUT] [SERIES...]
# SERIES: ref (3 runs, 2,000 x 50 @ 10 s), ref1s (the same with
# --batch-interval 1s), scale (500 .. 20,000 devices; 2,000 is ref), tags (10/50/200 tags),
# subs (not run by default: 3 runs each of ref polled, subscribed with 10 % and with
# 100 % of the tags changing per interval).
set -u
cd "$(dirname "$0")/../.."
OUT=${1:-bench-results}
shift || true
SERIES=${*:-ref ref1s scale tags}
BIN=target/release/opc-loadgen
mkdir -p "$OUT"

run() { # name, args...
  local name=$1; shift
  echo "=== $name: $*" >&2
  "$BIN" bench --interval 10s --warmup 20s "$@" --json "$OUT/$name.json" \
    > "$OUT/$name.txt" 2> "$OUT/$name.log" || echo "=== $name FAILED (see $OUT/$name.log)" >&2
}

for s in $SERIES; do
  case $s in
    ref)   for i in 1 2 3; do run "ref-$i" --devices 2000 --tags 50 --duration 60s; done ;;
    ref1s) for i in 1 2 3; do run "ref1s-$i" --devices 2000 --tags 50 --duration 60s --batch-interval 1s; done ;;
    scale) for d in 500 1000 5000 10000 19000 20000; do run "scale-$d" --devices "$d" --tags 50 --duration 60s; done ;;
    tags)  for t in 10 200; do run "tags-$t" --devices 2000 --tags "$t" --duration 60s; done ;;
    subs)  for i in 1 2 3; do
             run "subs-poll-$i" --devices 2000 --tags 50 --duration 60s
             run "subs-10pct-$i" --devices 2000 --tags 50 --duration 60s --mode subscribe --change-rate 0.01
             run "subs-100pct-$i" --devices 2000 --tags 50 --duration 60s --mode subscribe --change-rate 0.1
           done ;;
  esac
done
python3 "$(dirname "$0")/bench-table.py" "$OUT"
