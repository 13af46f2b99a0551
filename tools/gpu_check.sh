#!/usr/bin/env bash
# `make gpu-check`: the one command a session with a GPU runs. Builds the CUDA
# backend (nvcc, sm_90 + PTX), runs the op tests on the GPU at full Stable
# Diffusion shapes (tests/test_ops_cuda.cpp as test_ops_gpu) and the emulated
# op test, runs the kernel benchmarks (kernels/bench/bench_ops.c), and writes
# bench/results/gpu-<YYYY-MM-DD>.md (card, driver, commit, pass/fail per op,
# numbers). Where $OUT is set (the device tool), the report and logs are
# copied there too, so they come back.
#
# Run it on a lent GPU through the device tool, from the repository root:
#     run(command="make gpu-check")           # or: tools/gpu_check.sh
# The device image has nvcc, CMake and a C/C++ compiler but not easel's
# service libraries (libmicrohttpd, cJSON, libpng, SQLite, OpenBLAS). When the
# full CMake build cannot be configured, the script builds only what the
# check needs (engine core + CPU backend + kernels + tests) by hand, with
# tools/gpu_check/cblas_fallback.c standing in for OpenBLAS if it is absent.
# GPU_CHECK_STANDALONE=1 forces that path (to try it on a machine with the
# libraries). EASEL_COMMIT names the commit where the tree has no .git.
# Exit status: 0 when every op test passed (or no GPU: skipped).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
build=${GPU_BUILD:-build-gpu}
logs=$build/gpu-check
mkdir -p "$logs" bench/results
day=$(date -u +%F)
report=bench/results/gpu-$day.md
jobs=$(nproc 2>/dev/null || echo 4)
cuda=${CUDA_HOME:-/usr/local/cuda}
nvcc=$(command -v nvcc || echo "$cuda/bin/nvcc")

say() { echo "gpu-check: $*" >&2; }

# ---------------------------------------------------------------- build
build_cmake() {
  cmake -S . -B "$build" -DEASEL_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
        -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$logs/configure.log" 2>&1 || return 1
  cmake --build "$build" -j "$jobs" --target test_ops_gpu test_ops_cuda bench_ops \
        >"$logs/build.log" 2>&1 || { tail -n 40 "$logs/build.log" >&2; return 2; }
  bin_gpu=$build/tests/test_ops_gpu; bin_emu=$build/tests/test_ops_cuda; bin_bench=$build/bench_ops
}

build_standalone() {
  local o=$build/sa cflags cxx_inc blas
  mkdir -p "$o"
  cflags="-O2 -g -D_GNU_SOURCE -DEASEL_HAVE_CUDA=1 -DEASEL_VERSION=\"gpu-check\" -DEASEL_GIT=\"$commit\" -DEASEL_SOURCE_DIR=\"$root\" -I$root -I$cuda/include"
  if pkg-config --exists openblas 2>/dev/null; then
    cflags="$cflags $(pkg-config --cflags openblas)"; blas=$(pkg-config --libs openblas)
  else
    say "no OpenBLAS: using tools/gpu_check/cblas_fallback.c as the CPU reference's sgemm"
    cflags="$cflags -Itools/gpu_check"; blas="$o/cblas_fallback.o"
    gcc -std=c11 $cflags -c tools/gpu_check/cblas_fallback.c -o "$o/cblas_fallback.o" || return 2
  fi
  local core=(engine/tensor.c engine/err.c engine/log.c engine/backend.c engine/backend_cpu.c
              engine/threadpool.c) objs=() emu_objs=() f b pids=()
  for f in "${core[@]}" kernels/*.c; do
    b=$o/$(basename "$f").o; objs+=("$b")
    gcc -std=c11 $cflags -c "$f" -o "$b" & pids+=($!)
  done
  for f in kernels/*.cu; do
    b=$o/$(basename "$f").o; objs+=("$b")
    "$nvcc" -O2 -std=c++17 -lineinfo -gencode arch=compute_90,code=[sm_90,compute_90] \
      -D_GNU_SOURCE -I"$root" -Ikernels -c "$f" -o "$b" & pids+=($!)
    b=$o/emu_$(basename "$f").o; emu_objs+=("$b")
    g++ -std=c++17 -O2 -D_GNU_SOURCE -DEASEL_CUDA_EMU=1 -I"$root" -Ikernels -x c++ -c "$f" -o "$b" & pids+=($!)
  done
  for f in kernels/*.c; do
    b=$o/emu_$(basename "$f").o; emu_objs+=("$b")
    gcc -std=c11 $cflags -UEASEL_HAVE_CUDA -DEASEL_CUDA_EMU=1 -Ikernels -c "$f" -o "$b" & pids+=($!)
  done
  gcc -std=c11 $cflags -DEASEL_CUDA_EMU=1 -c kernels/emu/cuda_runtime_emu.c -o "$o/emu_rt.o" & pids+=($!)
  g++ -std=c++17 -O2 -D_GNU_SOURCE -I"$root" -c kernels/emu/emu.cpp -o "$o/emu_sched.o" & pids+=($!)
  g++ -std=c++17 $cflags -Ikernels -c tests/test_ops_cuda.cpp -o "$o/test_gpu.o" & pids+=($!)
  g++ -std=c++17 $cflags -UEASEL_HAVE_CUDA -DEASEL_CUDA_EMU=1 -Ikernels -c tests/test_ops_cuda.cpp -o "$o/test_emu.o" & pids+=($!)
  gcc -std=c11 $cflags -c kernels/bench/bench_ops.c -o "$o/bench_ops.o" & pids+=($!)
  local bad=0
  for p in "${pids[@]}"; do wait "$p" || bad=1; done
  [ $bad -eq 0 ] || return 2
  local core_objs=("${objs[@]:0:${#core[@]}}") libs="-L$cuda/lib64 -Wl,-rpath,$cuda/lib64 -lcudart -lcublasLt -lpthread -lm"
  g++ -o "$o/test_ops_gpu" "$o/test_gpu.o" "${objs[@]}" $blas $libs || return 2
  g++ -o "$o/bench_ops" "$o/bench_ops.o" "${objs[@]}" $blas $libs || return 2
  g++ -o "$o/test_ops_cuda" "$o/test_emu.o" "${emu_objs[@]}" "$o/emu_rt.o" "$o/emu_sched.o" \
      "${core_objs[@]}" $blas -lpthread -lm || return 2
  bin_gpu=$o/test_ops_gpu; bin_emu=$o/test_ops_cuda; bin_bench=$o/bench_ops
}

commit=${EASEL_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)} # a copied tree may lack .git
dirty=$(git status --porcelain 2>/dev/null | head -c1)
[ -n "$dirty" ] && commit="$commit+dirty"
card=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n1)
if [ -z "$card" ]; then
  card="no GPU visible (nvidia-smi failed)"
  report=$logs/gpu-$day.md # a run without a GPU leaves bench/results alone
fi
nvcc_v=$("$nvcc" --version 2>/dev/null | grep -o 'release [0-9.]*' || echo "nvcc not found")
say "card: $card; $nvcc_v; commit $commit"

t0=$(date +%s)
rc=1
if [ -z "${GPU_CHECK_STANDALONE:-}" ]; then build_cmake; rc=$?; fi
if [ $rc -eq 1 ] || [ -n "${GPU_CHECK_STANDALONE:-}" ]; then
  [ -n "${GPU_CHECK_STANDALONE:-}" ] || say "full CMake configure failed (service libraries missing?); standalone build"
  build_standalone; rc=$?
fi
if [ $rc -ne 0 ]; then say "build failed (logs in $logs)"; exit 2; fi
build_s=$(( $(date +%s) - t0 ))

# ---------------------------------------------------------------- run
export OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-Haswell}
say "op tests on the GPU (full SD shapes)"
TEST_VERBOSE=1 "$bin_gpu" >"$logs/test_ops_gpu.log" 2>&1; gpu_rc=$?
say "op tests in the emulator"
"$bin_emu" >"$logs/test_ops_cuda.log" 2>&1; emu_rc=$?
say "kernel benchmarks"
"$bin_bench" >"$logs/bench_ops.log" 2>&1; bench_rc=$?

# ---------------------------------------------------------------- report
{
  echo "# GPU check $day"
  echo
  echo "- card: $card"
  echo "- compiler: nvcc $nvcc_v, sm_90 + compute_90 PTX; build ${build_s}s"
  echo "- commit: $commit"
  echo "- produced by \`make gpu-check\` (tools/gpu_check.sh)"
  echo
  echo "## Op tests on the GPU (test_ops_gpu, exit $gpu_rc)"
  echo
  echo "Each op against the CPU backend (fp32 reference) on random inputs; tolerances in tests/test_ops_cuda.cpp."
  echo
  echo '| test | result |'
  echo '|---|---|'
  grep -E '^  (ok|FAIL|skipped:) ' "$logs/test_ops_gpu.log" | grep -v '(tests/' |
    sed -E 's/^  ok   (.*)/| \1 | pass |/; s/^  FAIL (.*)/| \1 | **FAIL** |/; s/^  skipped: ([^:]*): (.*)/| \1 | skipped (\2) |/'
  echo
  echo "$(tail -n1 "$logs/test_ops_gpu.log")"
  echo
  echo '<details><summary>errors per case (rel L2, max abs vs the CPU backend)</summary>'
  echo
  echo '```'
  grep -E '^    ' "$logs/test_ops_gpu.log" | sed 's/^    //'
  grep -E 'FAIL .*\(tests/' "$logs/test_ops_gpu.log" | head -n 40
  echo '```'
  echo '</details>'
  echo
  echo "## Op tests in the CPU emulator (test_ops_cuda, exit $emu_rc)"
  echo
  echo "$(tail -n1 "$logs/test_ops_cuda.log")"
  echo
  echo "## Kernel benchmarks (bench_ops, exit $bench_rc)"
  echo
  cat "$logs/bench_ops.log"
} >"$report"
say "wrote $report"
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
  cp "$report" "$OUT/" && cp -r "$logs" "$OUT/gpu-check-logs" 2>/dev/null
fi
tail -n 40 "$report"
[ $gpu_rc -eq 0 ] && [ $emu_rc -eq 0 ]
