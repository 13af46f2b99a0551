#!/usr/bin/env bash
# The last-resort build of tools/gpu_check.sh on a GPU machine that has nvcc
# but neither easel's service libraries nor a carried build (make gpu-carry):
# only what the op tests and kernel benchmarks need — the engine core, the CPU
# backend (the reference; tools/gpu_check/cblas_fallback.c stands in for
# OpenBLAS when it is absent), the CUDA backend and kernels (sm_90 + PTX),
# tests/test_ops_cuda.cpp as test_ops_gpu and kernels/bench/bench_ops.c.
# The end-to-end stage needs the full easel and is skipped after this build.
#   usage: tools/gpu_check/standalone.sh OUT_DIR
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
o=${1:?output dir}
mkdir -p "$o"
cuda=${CUDA_HOME:-/usr/local/cuda}
nvcc=$(command -v nvcc || echo "$cuda/bin/nvcc")
commit=${EASEL_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
cflags=(-O2 -g -D_GNU_SOURCE -DEASEL_HAVE_CUDA=1 "-DEASEL_VERSION=\"gpu-check\""
        "-DEASEL_GIT=\"$commit\"" "-DEASEL_SOURCE_DIR=\"$root\"" "-I$root" "-I$cuda/include")
blas=()
if pkg-config --exists openblas 2>/dev/null; then
  read -r -a extra <<<"$(pkg-config --cflags openblas)"
  cflags+=("${extra[@]}")
  read -r -a blas <<<"$(pkg-config --libs openblas)"
else
  echo "standalone: no OpenBLAS; tools/gpu_check/cblas_fallback.c is the CPU reference's sgemm"
  cflags+=(-Itools/gpu_check)
  gcc -std=c11 "${cflags[@]}" -c tools/gpu_check/cblas_fallback.c -o "$o/cblas_fallback.o"
  blas=("$o/cblas_fallback.o")
fi
core=(engine/tensor.c engine/err.c engine/log.c engine/backend.c engine/backend_cpu.c
      engine/threadpool.c)
objs=()
pids=()
for f in "${core[@]}" kernels/*.c; do
  b=$o/$(basename "$f").o
  objs+=("$b")
  gcc -std=c11 "${cflags[@]}" -c "$f" -o "$b" &
  pids+=($!)
done
for f in kernels/*.cu; do
  b=$o/$(basename "$f").o
  objs+=("$b")
  "$nvcc" -O2 -std=c++17 -lineinfo -gencode arch=compute_90,code=[sm_90,compute_90] \
    -D_GNU_SOURCE -I"$root" -Ikernels -c "$f" -o "$b" &
  pids+=($!)
done
g++ -std=c++17 "${cflags[@]}" -Ikernels -c tests/test_ops_cuda.cpp -o "$o/test_gpu.o" &
pids+=($!)
gcc -std=c11 "${cflags[@]}" -c kernels/bench/bench_ops.c -o "$o/bench_ops.o" &
pids+=($!)
bad=0
for p in "${pids[@]}"; do wait "$p" || bad=1; done
[ $bad -eq 0 ] || { echo "standalone: a compile failed"; exit 2; }
libs=(-L"$cuda/lib64" -Wl,-rpath,"$cuda/lib64" -lcudart -lcublasLt -lpthread -lm)
g++ -o "$o/test_ops_gpu" "$o/test_gpu.o" "${objs[@]}" "${blas[@]}" "${libs[@]}"
g++ -o "$o/bench_ops" "$o/bench_ops.o" "${objs[@]}" "${blas[@]}" "${libs[@]}"
echo "standalone: built $o/test_ops_gpu and $o/bench_ops"
