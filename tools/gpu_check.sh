#!/usr/bin/env bash
# `make gpu-check`: the one command a session lent a GPU runs (about 10
# minutes; tools/gpu_check/README.md). Stages, each with its own time limit,
# skipped when too little of the budget is left, each writing its log under
# $OUT as it goes (so a hang or a cut-off still returns what ran):
#   1 versions  nvidia-smi, nvcc, compute-sanitizer, torch, the binaries' libraries
#   2 build     the binaries carried from a build machine (.gpu-carry, made by
#               `make gpu-carry`), else a CMake build here, else a standalone
#               build of the op tests (the device image lacks easel's libraries)
#   3 ops       test_ops_gpu at full SD shapes against the CPU backend (fails
#               when nvidia-smi sees a GPU but the CUDA backend cannot start),
#               then bench_ops: the ceilings and every op at SD1.5 512² shapes
#   4 e2e       random SD1.5 weights (make-model): easel bench pipeline --device
#               cuda at 512² (per-step time, VAE, 1 and 2 workers), and a same-
#               seed image compared with the CPU's by PSNR (>= 30 dB)
#   5 torch     the same op shapes in PyTorch, for easel/torch ratios
#   6 sanitize  compute-sanitizer memcheck, racecheck, synccheck on small shapes
# Where no GPU is visible every stage runs or says "skipped: no CUDA device"
# and the exit status is 0; the report then stays under the build dir. With a
# GPU the report goes to bench/results/gpu-<date>-<card>.md (+ .json) and to
# $OUT. Exit status: 1 if any stage failed.
# Knobs: GPU_CHECK_BUDGET (seconds, 560), GPU_CHECK_BIN (a build dir with
# easel, tests/test_ops_gpu, bench_ops: skips the build), GPU_CHECK_STEPS
# (the PSNR image's steps; default the carried reference's, else 20),
# GPU_CHECK_STANDALONE=1 (force the standalone build), GPU_CHECK_RESULTS
# (where the report of a GPU run goes; bench/results), GPU_CHECK_MAX_<stage>
# (that stage's time limit, seconds).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
self="$root/tools/gpu_check.sh"

if [ "${1:-}" = "--stage" ]; then
  stage_main=$2
else
  stage_main=""
fi

# ---------------------------------------------------------------- shared setup
export GC_ROOT=$root
export GC_OUT=${GC_OUT:-${OUT:-$root/build-gpu/gpu-check}}
export GC_STATE=${GC_STATE:-$root/build-gpu/gpu-check-state}
GC_BIN_DIR=${GC_BIN_DIR:-${GPU_CHECK_BIN:-}}
[ -z "$GC_BIN_DIR" ] || GC_BIN_DIR=$(cd "$GC_BIN_DIR" && pwd)
export GC_BIN_DIR
mkdir -p "$GC_OUT" "$GC_STATE"
say() { echo "gpu-check: $*" >&2; }
gpu_visible() { nvidia-smi -L 2>/dev/null | grep -q '^GPU'; }
cuda_home=${CUDA_HOME:-/usr/local/cuda}
nvcc=$(command -v nvcc || echo "$cuda_home/bin/nvcc")
py=$(command -v python3 || echo python3)

# Where libcublasLt and libcudart are on this machine (the toolkit, or PyTorch's wheels).
cuda_lib_dirs() {
  local d
  for d in "$cuda_home/lib64" "$cuda_home/lib" /usr/local/cuda/lib64 /usr/local/cuda-13*/lib64 \
           /usr/local/cuda-13*/targets/x86_64-linux/lib; do
    [ -e "$d/libcublasLt.so.13" ] && printf '%s:' "$d"
  done
  "$py" - <<'EOF' 2>/dev/null
import glob, os, site
for s in site.getsitepackages():
    for d in glob.glob(os.path.join(s, "nvidia", "*", "lib")) + glob.glob(os.path.join(s, "nvidia", "cu13", "lib")):
        if glob.glob(os.path.join(d, "libcublasLt.so.*")) or glob.glob(os.path.join(d, "libcudart.so.*")):
            print(d, end=":")
EOF
}

# Appends a fragment to this stage's markdown section.
frag() { cat >>"$GC_STATE/$stage_main.md"; }

# ---------------------------------------------------------------- stages
stage_versions() {
  echo "## versions"; date -u
  echo "--- nvidia-smi"; nvidia-smi 2>&1 | head -n 20 || echo "nvidia-smi: not found"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | head -n 3
  echo "--- nvcc"; "$nvcc" --version 2>&1 | tail -n 2
  echo "--- compute-sanitizer"; compute-sanitizer --version 2>&1 | tail -n 1
  echo "--- python / torch"
  "$py" -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())" 2>&1 | tail -n 1
  echo "--- host"; uname -srm; nproc; (grep -m1 'model name' /proc/cpuinfo || true)
  grep -m1 -E 'MemTotal' /proc/meminfo || true
  {
    echo "- card: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n1 || echo none)"
    echo "- nvcc: $("$nvcc" --version 2>/dev/null | grep -o 'release [0-9.]*' || echo none); torch: $("$py" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo none)"
  } | frag
  return 0
}

# bin_env EASEL TEST_OPS_GPU BENCH_OPS LIBS FROM: what later stages source.
bin_env() {
  printf 'EASEL=%q\nTEST_OPS_GPU=%q\nBENCH_OPS=%q\nLIBS=%q\nFROM=%q\n' "$@" >"$GC_STATE/bin.env"
}

# Sets up $GC_STATE/bin.env (the binaries and the library path they need).
stage_build() {
  local libs bin=""
  libs=$(cuda_lib_dirs)
  if [ -n "$GC_BIN_DIR" ]; then
    bin=$GC_BIN_DIR
    echo "binaries: $bin (GPU_CHECK_BIN)"
    bin_env "$bin/easel" "$bin/tests/test_ops_gpu" "$bin/bench_ops" "$libs" "build dir $bin"
  elif [ -f "$root/.gpu-carry/carry.tar.xz" ] && [ -z "${GPU_CHECK_STANDALONE:-}" ]; then
    local x=/tmp/easel-gpu-carry
    rm -rf "$x" && mkdir -p "$x"
    echo "unpacking .gpu-carry/carry.tar.xz"
    if command -v xz >/dev/null; then
      tar -xJf "$root/.gpu-carry/carry.tar.xz" -C "$x" || return 1
    else
      "$py" -c "import tarfile, sys; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" \
        "$root/.gpu-carry/carry.tar.xz" "$x" || return 1
    fi
    grep -E '^(commit|built|nvcc):' "$root/.gpu-carry/manifest.txt"
    local want have
    want=$(sed -n 's/^commit: //p' "$root/.gpu-carry/manifest.txt")
    have=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo "${EASEL_COMMIT:-unknown}")
    [ "${want%+dirty}" = "$have" ] || echo "warning: the carried binaries are of $want, this tree is $have"
    bin_env "$x/bin/easel" "$x/bin/test_ops_gpu" "$x/bin/bench_ops" "$x/lib:$libs" "carried ($want)"
  else
    echo "no .gpu-carry: building here"
    local b=$root/build-gpu
    if [ -z "${GPU_CHECK_STANDALONE:-}" ] &&
       cmake -S . -B "$b" -DEASEL_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DCMAKE_BUILD_TYPE=RelWithDebInfo &&
       cmake --build "$b" -j "$(nproc)" --target easel test_ops_gpu bench_ops; then
      bin_env "$b/easel" "$b/tests/test_ops_gpu" "$b/bench_ops" "$libs" "built here (CMake)"
    else
      echo "CMake build not possible (the service libraries are missing?): standalone op tests"
      "$root/tools/gpu_check/standalone.sh" "$b/sa" || return 1
      bin_env "" "$b/sa/test_ops_gpu" "$b/sa/bench_ops" "$libs" \
        "standalone op tests (no easel: carry one with make gpu-carry)"
    fi
  fi
  # shellcheck disable=SC1091
  . "$GC_STATE/bin.env"
  local f
  for f in "$EASEL" "$TEST_OPS_GPU" "$BENCH_OPS"; do
    [ -n "$f" ] || continue
    [ -x "$f" ] || { echo "missing: $f"; return 1; }
    echo "--- ldd $(basename "$f")"
    LD_LIBRARY_PATH="$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ldd "$f" | grep -E 'not found|cuda|cublas|openblas' || true
    LD_LIBRARY_PATH="$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ldd "$f" | grep -q 'not found' &&
      { echo "FAIL: $(basename "$f") has unresolved libraries"; return 1; }
  done
  [ -z "$EASEL" ] || LD_LIBRARY_PATH="$LIBS" "$EASEL" info
  echo "- binaries: $FROM" | frag
}

load_bin() {
  # shellcheck disable=SC1091
  . "$GC_STATE/bin.env" 2>/dev/null || return 1
  export LD_LIBRARY_PATH="$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
}

stage_ops() {
  load_bin || { echo "no binaries (the build stage did not finish)"; return 1; }
  local req=0
  gpu_visible && req=1
  echo "--- test_ops_gpu (full shapes; EASEL_REQUIRE_GPU=$req)"
  EASEL_REQUIRE_GPU=$req TEST_VERBOSE=1 OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-Haswell} \
    "$TEST_OPS_GPU" 2>&1 | tee "$GC_STATE/test_ops_gpu.txt"
  local rc=${PIPESTATUS[0]}
  {
    echo '```'
    grep -E '^(FAIL|  FAIL|  skipped)' "$GC_STATE/test_ops_gpu.txt" | head -n 30
    grep -E '^    ' "$GC_STATE/test_ops_gpu.txt" | sed 's/^    //' | head -n 120
    tail -n 1 "$GC_STATE/test_ops_gpu.txt"
    echo '```'
  } | frag
  [ $rc -eq 0 ] || return 1
  if grep -q 'no CUDA device' "$GC_STATE/test_ops_gpu.txt"; then
    echo "skipped: no CUDA device" | tee "$GC_STATE/ops.skip"
    return 0
  fi
  echo "--- bench_ops"
  "$BENCH_OPS" --json "$GC_STATE/bench_ops.json" 2>&1 | tee "$GC_STATE/bench_ops.txt"
  grep -E '^ceilings' "$GC_STATE/bench_ops.txt" | sed 's/^/- /' | frag
}

stage_e2e() {
  gpu_visible || { echo "skipped: no CUDA device" >"$GC_STATE/e2e.skip"; echo "skipped: no CUDA device"; return 0; }
  load_bin || return 1
  [ -n "$EASEL" ] || { echo "skipped: no easel binary (standalone build; carry one: make gpu-carry)" >"$GC_STATE/e2e.skip"; return 0; }
  # shellcheck disable=SC1091
  . "$root/tools/gpu_check/ref_args.sh"
  local m=/tmp/easel-gpu-check-model t0=$SECONDS
  rm -rf "$m"
  echo "--- make-model sd15 (random weights, f16)"
  "$EASEL" "${REF_MODEL_ARGS[@]}" --out "$m" || return 1
  echo "  $((SECONDS - t0)) s"
  local ref="$root/.gpu-carry/cpu-ref.png" steps=${GPU_CHECK_STEPS:-}
  if [ -f "$ref" ]; then
    local rsteps sha
    rsteps=$(sed -n 's/^ref: .* steps \([0-9]*\) .*/\1/p' "$root/.gpu-carry/manifest.txt")
    sha=$(sed -n 's/^ref: .* unet-sha \([0-9a-f]*\) .*/\1/p' "$root/.gpu-carry/manifest.txt")
    steps=${steps:-$rsteps}
    [ "$(sha256sum "$m"/unet/*.safetensors | cut -c1-16)" = "$sha" ] ||
      echo "warning: the UNet weights differ from the reference's (make-model changed?)"
  fi
  steps=${steps:-20}
  echo "--- bench pipeline --device cuda, 512², 20 steps, 1 and 2 workers"
  "$EASEL" bench pipeline --model "$m" --device cuda --size 512 --steps 20 --repeats 3 --warmup 1 \
    --splits "1x1,2x1" --throughput-images 2 --json "$GC_STATE/pipeline.json" || return 1
  echo "--- same seed on the GPU ($steps steps)"
  "$EASEL" generate --model "$m" --device cuda --steps "$steps" "${REF_ARGS[@]}" \
    --out "$GC_STATE/gpu.png" || return 1
  if [ ! -f "$ref" ]; then
    echo "--- no carried CPU reference: rendering it on this machine's CPU"
    ref=$GC_STATE/cpu.png
    timeout "${GC_LEFT:-300}" "$EASEL" generate --model "$m" --device cpu --steps "$steps" \
      "${REF_ARGS[@]}" --out "$ref" || { echo "CPU reference not finished"; return 1; }
  fi
  "$py" "$root/tools/gpu_check/psnr.py" "$ref" "$GC_STATE/gpu.png" | tee "$GC_STATE/psnr.txt"
  local rc=${PIPESTATUS[0]}
  sed -i "s/^/$steps steps: /" "$GC_STATE/psnr.txt"
  return $rc
}

stage_torch() {
  gpu_visible || { echo "skipped: no CUDA device" >"$GC_STATE/torch.skip"; echo "skipped: no CUDA device"; return 0; }
  "$py" "$root/tools/gpu_check/torch_ops.py" --json "$GC_STATE/torch_ops.json" | tee "$GC_STATE/torch.txt"
  local rc=${PIPESTATUS[0]}
  grep -m1 '^skipped:' "$GC_STATE/torch.txt" >"$GC_STATE/torch.skip" || rm -f "$GC_STATE/torch.skip"
  return $rc
}

stage_sanitize() {
  gpu_visible || { echo "skipped: no CUDA device" >"$GC_STATE/sanitize.skip"; echo "skipped: no CUDA device"; return 0; }
  command -v compute-sanitizer >/dev/null || { echo "skipped: no compute-sanitizer" >"$GC_STATE/sanitize.skip"; return 0; }
  load_bin || return 1
  local tool only fails=0 per=$(( ${GC_LEFT:-150} / 3 ))
  for tool in memcheck racecheck synccheck; do
    case $tool in
      memcheck) only="upload,copy,unary,binary,axpby,concat,group_norm,layer_norm,softmax,attention,linear,bmm,conv2d,f32_view,graph" ;;
      *) only="group_norm,layer_norm,softmax,attention" ;; # the kernels with shared memory
    esac
    echo "--- compute-sanitizer --tool $tool (small shapes: $only)"
    TEST_OPS_SMALL=1 TEST_OPS_ONLY=$only timeout "$per" compute-sanitizer --tool "$tool" \
      --error-exitcode 99 --print-limit 20 "$TEST_OPS_GPU" >"$GC_STATE/san-$tool.txt" 2>&1
    local rc=$?
    tail -n 25 "$GC_STATE/san-$tool.txt"
    local verdict="pass"
    if grep -qiE 'device not supported|unable to|not supported on this' "$GC_STATE/san-$tool.txt" && [ $rc -ne 0 ]; then
      verdict="skipped: compute-sanitizer cannot run here ($(grep -m1 -iE 'not supported|unable' "$GC_STATE/san-$tool.txt"))"
    elif [ $rc -eq 124 ]; then
      verdict="skipped: ran past its ${per}s"
    elif [ $rc -ne 0 ]; then
      verdict="FAIL (exit $rc)"; fails=1
    fi
    echo "- $tool: $verdict ($(grep -m1 -E 'ERROR SUMMARY' "$GC_STATE/san-$tool.txt" || echo 'no summary'))" | frag
  done
  return $fails
}

if [ -n "$stage_main" ]; then
  "stage_$stage_main"
  exit $?
fi

# ---------------------------------------------------------------- the driver
budget=${GPU_CHECK_BUDGET:-560}
start=$SECONDS
: >"$GC_STATE/stages.tsv"
rm -f "$GC_STATE"/*.md "$GC_STATE"/*.skip "$GC_STATE"/*.json "$GC_STATE"/*.txt
card=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1)
driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n1)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo "${EASEL_COMMIT:-unknown}")
[ -n "$(git status --porcelain --untracked-files=no 2>/dev/null | head -c1)" ] && commit="$commit+dirty"
day=$(date -u +%F)
slug=$(echo "${card:-no-gpu}" | tr 'A-Z ' 'a-z-' | tr -cd 'a-z0-9-')
name="gpu-$day-$slug"
report_md="$GC_OUT/$name.md"
report_json="$GC_OUT/$name.json"
cat >"$GC_STATE/meta.json" <<EOF
{"date": "$day", "card": "${card:-no GPU visible (nvidia-smi)}", "driver": "${driver:-}",
 "commit": "$commit", "command": "make gpu-check (tools/gpu_check.sh)", "budget": "${budget}s"}
EOF

report() {
  "$py" "$root/tools/gpu_check/report.py" "$GC_STATE" "$report_md" "$report_json" 2>/dev/null ||
    echo "(report.py failed; stage logs are in $GC_OUT)" >"$report_md"
}

failed=0
n=0
no_backend=""
# run_stage NAME MIN_S MAX_S: runs it under a timeout, its log in $GC_OUT as it goes.
run_stage() {
  local name=$1 min=$2 max=$3
  n=$((n + 1))
  local log="$GC_OUT/$n-$name.log" left=$((budget - (SECONDS - start) - 15)) status t0=$SECONDS
  if [ -n "$no_backend" ] && { [ "$name" = e2e ] || [ "$name" = sanitize ]; }; then
    status="skipped: the CUDA backend cannot start (see the ops stage)"
    echo "$status" >"$log"
  elif [ $left -lt "$min" ]; then
    status="skipped: too little time left (${left}s of ${budget}s; needs ${min}s)"
    echo "$status" >"$log"
  else
    local over="GPU_CHECK_MAX_$name"
    [ -n "${!over:-}" ] && max=${!over} # e.g. GPU_CHECK_MAX_ops=60
    local lim=$((max < left ? max : left))
    say "stage $n $name (up to ${lim}s)"
    GC_LEFT=$lim timeout --kill-after=10 "$lim" "$self" --stage "$name" >"$log" 2>&1
    local rc=$?
    if [ -f "$GC_STATE/$name.skip" ]; then
      status=$(cat "$GC_STATE/$name.skip")
    elif [ $rc -eq 0 ]; then
      status=pass
    elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
      status="FAIL: ran past its ${lim}s (hung?)"; failed=1
    else
      status="FAIL (exit $rc; see $n-$name.log)"; failed=1
    fi
    if [ "$name" = ops ] && grep -q '^FAIL: a GPU is visible' "$GC_STATE/test_ops_gpu.txt" 2>/dev/null; then
      status="FAIL: a GPU is visible (nvidia-smi) but the CUDA backend cannot start: $(sed -n 's/^FAIL: a GPU is visible but the CUDA backend cannot start: //p' "$GC_STATE/test_ops_gpu.txt" | head -n1)"
      no_backend=1
    fi
  fi
  printf '%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - t0))" >>"$GC_STATE/stages.tsv"
  say "  $name: $status"
  report
}

say "card: ${card:-none visible}; commit $commit; budget ${budget}s; logs in $GC_OUT"
run_stage versions 5 30
run_stage build 20 240
run_stage ops 60 200
run_stage e2e 90 240
run_stage torch 30 90
run_stage sanitize 30 150
report
results=${GPU_CHECK_RESULTS:-bench/results}
if [ -n "$card" ]; then
  mkdir -p "$results"
  cp "$report_md" "$results/$name.md"
  cp "$report_json" "$results/$name.json"
  say "wrote $results/$name.md (commit it) and $report_md"
else
  say "no GPU visible: nothing measured; report in $report_md"
fi
cat "$GC_STATE/stages.tsv" | awk -F'\t' '{printf "  %-9s %s (%ss)\n", $1, $2, $3}'
exit $failed
