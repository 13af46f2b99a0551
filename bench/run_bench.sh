#!/usr/bin/env bash
# `make bench`: the CPU and HTTP benches of easel and its peers on this machine,
# written to bench/results/<date>-<machine>.{md,json} + plots. Under 15 minutes
# with the defaults (256², 1-2 steps); BENCH_FULL=1 adds 512² (UNet step, VAE
# decode, a 20-step image end to end) and 1-thread peers. easel runs in bf16
# (where the CPU has it) and fp32, diffusers in fp32 and bf16, in the same run.
#
#   bench/run_bench.sh [BUILD]       (BUILD: the cmake build dir, default build)
# Environment: BENCH_FULL=1, BENCH_SKIP="ops pipeline sd15 sdcpp diffusers http" (any),
#   BENCH_CACHE (made models, default /tmp/easel-bench-cache), BENCH_OUT (bench/results),
#   BENCH_MACHINE (name in the file names), SDCPP_DIR (/work/peers/sdcpp),
#   TOOLS_PY (python with torch/diffusers/fastapi/matplotlib, default .venv-tools/bin/python),
#   BENCH_KEEP=1 (keep the work dir of raw JSON and logs).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BUILD=${1:-build}
EASEL="$ROOT/$BUILD/easel"
[ -x "$EASEL" ] || { echo "run_bench: no $EASEL (build first: make build)" >&2; exit 1; }
TOOLS_PY=${TOOLS_PY:-$ROOT/.venv-tools/bin/python}
CACHE=${BENCH_CACHE:-/tmp/easel-bench-cache}
OUT=${BENCH_OUT:-$ROOT/bench/results}
SKIP=" ${BENCH_SKIP:-} "
THREADS=${BENCH_THREADS:-2}
STEPS=${BENCH_STEPS:-2}
export OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-Haswell}
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
WORK=$(mktemp -d /tmp/easel-bench-run-XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null; done
  if [ -n "${BENCH_KEEP:-}" ]; then echo "run_bench: kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
mkdir -p "$CACHE" "$OUT"
T_START=$(date +%s)
CMDS="$WORK/commands.txt"
: > "$CMDS"

say() { echo "== $* ($(($(date +%s) - T_START)) s)"; }
skipped() { case "$SKIP" in *" $1 "*) return 0 ;; esac; return 1; }
note() { echo "$*" >> "$WORK/notes.txt"; echo "   $*"; }
# Runs a command, logs its command line for the report, keeps its stdout (JSON lines / tables).
run() {
  echo "$*    # load $(cut -d' ' -f1 /proc/loadavg), $(date -u +%H:%M:%S)" >> "$CMDS"
  "$@"
}
have_tools_py() { [ -x "$TOOLS_PY" ] && "$TOOLS_PY" -c "import $1" 2>/dev/null; }

machine_info() {
  local cpu gpu="none" driver=""
  cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
  if command -v nvidia-smi > /dev/null 2>&1; then
    gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
    driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1)
  fi
  MACHINE=${BENCH_MACHINE:-$(nproc)cpu-$(echo "$cpu" | tr 'A-Z' 'a-z' | sed -E 's/\((r|tm)\)//g; s/[^a-z0-9]+/-/g; s/-+$//; s/-processor//; s/-cpu//' | cut -c1-32)}
  python3 - "$WORK/meta.json" "$cpu" "$(nproc)" "$gpu" "$driver" "$MACHINE" \
    "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    "$(git status --porcelain 2>/dev/null | grep -q . && echo dirty || echo clean)" \
    "$(grep -o 'avx512f' /proc/cpuinfo | head -1)" "$OPENBLAS_CORETYPE" "$THREADS" <<'EOF'
import json, sys, datetime, platform
out, cpu, cores, gpu, driver, machine, commit, tree, avx512, coretype, threads = sys.argv[1:]
json.dump({"date": datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M UTC"), "machine": machine,
           "cpu": cpu, "cores": int(cores), "gpu": gpu, "driver": driver, "commit": commit,
           "tree": tree, "avx512": bool(avx512), "openblas_coretype": coretype,
           "threads": int(threads), "kernel": platform.release(),
           "load_at_start": open("/proc/loadavg").read().split()[:3]}, open(out, "w"))
EOF
}

# make-model outputs are cached: random weights, the same for every run of a commit's make-model.
make_model() { # arch out
  [ -e "$2" ] && return 0
  run "$EASEL" make-model --arch "$1" --out "$2" > "$WORK/make-$1.log" 2>&1 ||
    { note "make-model --arch $1 --out $2 failed: $(tail -1 "$WORK/make-$1.log")"; rm -rf "$2"; return 1; }
}

# The precisions easel runs in: bf16 where this CPU has it (easel info), and fp32.
PRECS="fp32"
"$EASEL" info 2>/dev/null | grep -q "^precision auto: bf16" && PRECS="bf16 fp32"

bench_ops() {
  skipped ops && return
  local set="--quick" p
  [ -n "${BENCH_FULL:-}" ] && set=""
  for p in $PRECS; do
    say "ops ($p${set:+, quick set})"
    run "$EASEL" bench ops $set --precision "$p" --threads "$THREADS" --json "$WORK/ops-$p.json" ||
      note "easel bench ops --precision $p failed"
  done
}

pipe() { # name model size steps threads repeats splits images-per-worker precision
  local name=$1 model=$2 size=$3 steps=$4 threads=$5 repeats=$6 splits=$7 images=${8:-1} prec=${9:-auto}
  run "$EASEL" bench pipeline --model "$model" --size "$size" --steps "$steps" --threads "$threads" \
    --repeats "$repeats" --warmup 1 --splits "$splits" --throughput-images "$images" \
    --precision "$prec" --json "$WORK/pipeline-$name.json" || note "bench pipeline $name failed"
}

bench_pipeline() {
  skipped pipeline && return
  local p
  say "pipeline: tiny"
  make_model tiny "$CACHE/tiny" && pipe tiny-256 "$CACHE/tiny" 256 "$STEPS" "$THREADS" 3 1x2,2x1 4
  skipped sd15 && return
  say "pipeline: sd15 (random weights)"
  make_model sd15 "$CACHE/sd15" || return
  for p in $PRECS; do
    # the 2 workers x 1 thread vs 1 worker x 2 threads images/s at 256²
    pipe sd15-256-$p-t$THREADS "$CACHE/sd15" 256 "$STEPS" "$THREADS" 2 1x2,2x1 1 "$p"
    pipe sd15-256-$p-t1 "$CACHE/sd15" 256 1 1 1 "" 1 "$p"
  done
  if [ -n "${BENCH_FULL:-}" ]; then
    for p in $PRECS; do
      pipe sd15-512-$p-t$THREADS "$CACHE/sd15" 512 "$STEPS" "$THREADS" 2 "" 1 "$p"
    done
    # one SD1.5 20-step 512² image end to end, in the fastest precision here
    set -- $PRECS
    pipe sd15-512-$1-20steps "$CACHE/sd15" 512 20 "$THREADS" 1 "" 1 "$1"
  fi
}

peer_sdcpp() {
  skipped sdcpp && return
  say "peer: stable-diffusion.cpp"
  if ! bench/peers/sdcpp.sh available; then
    note "sdcpp: skipped, not built (bench/peers/sdcpp.sh build; needs the fetched snapshots)"
    return
  fi
  make_model sd15 "$CACHE/sd15.safetensors" || return
  local ck="$CACHE/sd15-sdcpp.safetensors" sizes="256" s
  if [ ! -e "$ck" ]; then
    run env TOOLS_PY="$TOOLS_PY" bench/peers/sdcpp.sh prepare "$CACHE/sd15.safetensors" "$ck" ||
      { note "sdcpp: could not add the VAE encoder to the checkpoint"; rm -f "$ck"; return; }
  fi
  [ -n "${BENCH_FULL:-}" ] && sizes="256 512"
  for s in $sizes; do
    run bench/peers/sdcpp.sh run "$ck" "$s" "$STEPS" "$THREADS" >> "$WORK/peers.jsonl" ||
      note "sdcpp at ${s}² failed"
  done
  if [ -n "${BENCH_FULL:-}" ]; then
    run bench/peers/sdcpp.sh run "$ck" 256 1 1 >> "$WORK/peers.jsonl" || true
  fi
}

peer_diffusers() {
  skipped diffusers && return
  say "peer: diffusers CPU (fp32 and bf16)"
  if ! have_tools_py diffusers; then
    note "diffusers: skipped, no diffusers in $TOOLS_PY"
    return
  fi
  make_model sd15 "$CACHE/sd15" || return
  local sizes="256" s dt
  [ -n "${BENCH_FULL:-}" ] && sizes="256 512"
  for s in $sizes; do
    for dt in bf16 fp32; do
      run "$TOOLS_PY" bench/peers/diffusers_cpu.py --model "$CACHE/sd15" --size "$s" --steps "$STEPS" \
        --threads "$THREADS" --repeats 1 --warmup 1 --dtype "$dt" >> "$WORK/peers.jsonl" \
        2> "$WORK/diffusers.err" ||
        note "diffusers $dt at ${s}² failed: $(tail -2 "$WORK/diffusers.err" | tr '\n' ' ')"
    done
  done
}

wait_http() { # url
  for _ in $(seq 1 150); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.2
  done
  return 1
}

bench_http() {
  skipped http && return
  say "http: easel serve vs the seed's FastAPI replica"
  command -v wrk > /dev/null || { note "http: skipped, wrk not installed (apt-get install wrk)"; return; }
  make_model tiny "$CACHE/tiny" || return
  local p1=${BENCH_PORT:-18771} p2=$((${BENCH_PORT:-18771} + 1)) targets=()
  mkdir -p "$WORK/data"
  # Tiny 64² 1-step jobs: the two workers barely load the CPU while the HTTP side is measured.
  local serve=("$EASEL" serve --model "$CACHE/tiny" --data-dir "$WORK/data" --host 127.0.0.1
               --port "$p1" --workers 2 --threads 1 --queue-max 100000 --default-size 64
               --default-steps 1 --no-calibrate)
  echo "${serve[*]}" >> "$CMDS"
  "${serve[@]}" > "$WORK/serve.log" 2>&1 &
  PIDS+=($!)
  if wait_http "http://127.0.0.1:$p1/healthz"; then
    targets+=(--target "easel-v1=http://127.0.0.1:$p1,v1" --target "easel-compat=http://127.0.0.1:$p1,compat")
  else
    note "http: easel serve did not come up: $(tail -2 "$WORK/serve.log" | tr '\n' ' ')"
  fi
  if have_tools_py fastapi; then
    echo "$TOOLS_PY bench/peers/seed_service.py --port $p2" >> "$CMDS"
    "$TOOLS_PY" bench/peers/seed_service.py --port "$p2" > "$WORK/seed.log" 2>&1 &
    PIDS+=($!)
    if wait_http "http://127.0.0.1:$p2/docs"; then
      targets+=(--peer "seed-fastapi=http://127.0.0.1:$p2,compat")
    else
      note "http: seed replica did not come up: $(tail -2 "$WORK/seed.log" | tr '\n' ' ')"
    fi
  else
    note "http: seed replica skipped, no fastapi/uvicorn in $TOOLS_PY"
  fi
  [ ${#targets[@]} -gt 0 ] || return
  run "$EASEL" bench http "${targets[@]}" --starts 1000 --json "$WORK/http.json" || note "bench http reported errors"
}

machine_info
bench_ops
bench_pipeline
peer_sdcpp
peer_diffusers
bench_http
say "report"
note "total bench time: $(($(date +%s) - T_START)) s"
# The report needs only the standard library; the plots need matplotlib (the tools venv).
REPORT_PY=python3
have_tools_py matplotlib && REPORT_PY=$TOOLS_PY
"$REPORT_PY" bench/peers/report.py --work "$WORK" --out "$OUT" || { echo "run_bench: report failed" >&2; exit 1; }
