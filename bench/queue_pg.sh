#!/usr/bin/env bash
# The job store as a queue, SQLite vs PostgreSQL (issue 21), on this machine:
#  1. `easel bench queue` (no model; trivial jobs): submit p50/p99 and
#     claim+complete jobs/s for SQLite (normal, full) on one node and
#     PostgreSQL with 1, 2, 3 nodes (each its own connections), REPEATS
#     rounds interleaved; PostgreSQL with fsync off (the test server's
#     default) and on (a real disk's commit).
#  2. `easel bench http` against two running `easel serve` (tiny model, jobs
#     canceled as they start): job start p50/p99 (POST /v1/jobs) and status
#     poll latency (wrk) with --store sqlite vs --store postgres://.
# Output: one JSON object per line in OUT (default bench/results/queue-raw.jsonl).
#   usage: bench/queue_pg.sh BUILD [REPEATS]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:?build dir}; repeats=${2:-3}
exe="$root/$build/easel"; [ -x "$exe" ] || exe="$build/easel"
out=${OUT:-$root/bench/results/queue-raw.jsonl}
jobs=${QUEUE_JOBS:-2000}
work=$(mktemp -d /tmp/easel-qbench-XXXXXX); chmod 755 "$work" # the server runs as postgres when we are root
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for d in "$work"/pg-*; do [ -d "$d" ] && "$root/tools/pgtmp.sh" stop "$d" immediate; done
  rm -rf "$work"
}
trap cleanup EXIT
: >"$out"
export EASEL_LOG=warn PGOPTIONS='-c client_min_messages=warning'

run_queue() { # label store nodes
  local j="$work/q.json"
  "$exe" bench queue --store "$2" --nodes "$3" --jobs "$jobs" --json "$j" >/dev/null 2>&1 ||
    { echo "bench queue $1 failed" >&2; return 0; }
  python3 -c "import json,sys; d=json.load(open('$j')); d['label']='$1'; d['round']=$4; print(json.dumps(d))" >>"$out"
}

for fsync in off on; do
  EASEL_PG_FSYNC=$fsync "$root/tools/pgtmp.sh" start "$work/pg-$fsync" >/dev/null
done
for r in $(seq 1 "$repeats"); do
  run_queue sqlite sqlite 1 "$r"
  run_queue sqlite-full sqlite-full 1 "$r"
  for fsync in off on; do
    for n in 1 2 3; do
      url=$("$root/tools/pgtmp.sh" createdb "$work/pg-$fsync" "q${n}_$r")
      run_queue "pg-fsync-$fsync" "$url" "$n" "$r"
    done
  done
  echo "round $r done" >&2
done

# the HTTP side: job start and status latency through a running server
model="$work/tiny"; "$exe" make-model --arch tiny --out "$model" >/dev/null 2>&1
url=$("$root/tools/pgtmp.sh" createdb "$work/pg-off" http)
"$exe" serve --model "$model" --port 18791 --data-dir "$work/d-sqlite" --no-calibrate \
  --queue-max 100000 >"$work/sqlite.log" 2>&1 & pids+=($!)
"$exe" serve --model "$model" --port 18792 --data-dir "$work/d-pg" --no-calibrate \
  --queue-max 100000 --store "$url" >"$work/pg.log" 2>&1 & pids+=($!)
for p in 18791 18792; do
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$p/healthz" >/dev/null && break; sleep 0.1; done
done
for r in $(seq 1 "$repeats"); do
  "$exe" bench http --target sqlite=http://127.0.0.1:18791 --target postgres=http://127.0.0.1:18792 \
    --starts 300 --duration 5 --json "$work/h.json" >/dev/null 2>&1 || echo "bench http failed" >&2
  python3 -c "import json; d=json.load(open('$work/h.json')); d['label']='http'; d['round']=$r; print(json.dumps(d))" >>"$out"
done
echo "results in $out" >&2
