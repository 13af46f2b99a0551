#!/usr/bin/env bash
# `make gpu-carry`: packs, here, what `make gpu-check` needs on a lent GPU
# machine whose image has nvcc, CMake and PyTorch but none of easel's service
# libraries (libmicrohttpd, cJSON, libpng, SQLite, OpenBLAS): the CUDA-enabled
# easel, test_ops_gpu and bench_ops (sm_90), built here, plus every shared
# library they load that is not glibc's or CUDA's own, as one xz archive (the
# device tool carries at most 64 MiB; OpenBLAS alone is 36 MB unpacked); and
# the CPU reference image of the end-to-end check (random SD1.5 weights from
# make-model, 512x512, same seed), so the GPU session spends no time on it.
# Writes .gpu-carry/ (ignored by git; name it in the device tool's carry):
#   carry.tar.xz   bin/{easel,test_ops_gpu,bench_ops}, lib/*.so*
#   cpu-ref.png    the CPU image (GPU_CARRY_REF_STEPS=0: none; the check then
#                  renders it on the device's CPU)
#   manifest.txt   commit, build, files and sha256s, the reference's parameters
# Then verifies the archive in a clean root (chroot: glibc and CUDA's runtime
# libraries only, env -i): every binary loads, and a tiny model renders on the
# CPU through the carried OpenBLAS/libpng/cJSON. Needs root for the chroot
# (else says "skipped"). Knobs: GPU_CARRY_BUILD (build-cuda), GPU_CARRY_OUT
# (.gpu-carry), GPU_CARRY_REF_STEPS (20), GPU_CARRY_XZ (xz level, 6),
# GPU_CARRY_NO_BUILD=1 (pack the build dir as it is), GPU_CARRY_VERIFY_ONLY=1
# (check an existing archive).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
build=${GPU_CARRY_BUILD:-build-cuda}
out=${GPU_CARRY_OUT:-$root/.gpu-carry}
ref_steps=${GPU_CARRY_REF_STEPS:-20}
xz_level=${GPU_CARRY_XZ:-6}
say() { echo "gpu-carry: $*" >&2; }

# The reference image's parameters; tools/gpu_check.sh renders the GPU one alike.
. "$root/tools/gpu_check/ref_args.sh"

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -z "$(git status --porcelain --untracked-files=no 2>/dev/null | head -c1)" ] || commit="$commit+dirty"

# Shared libraries glibc and CUDA provide on the device: not carried.
system_lib() {
  case "$1" in
    linux-vdso*|ld-linux*|libc.so*|libm.so*|libdl.so*|libpthread.so*|librt.so*|libutil.so*) return 0 ;;
    libcuda.so*|libcublas.so*|libcublasLt.so*|libnvidia*) return 0 ;;
  esac
  return 1
}

pack() {
  if [ -z "${GPU_CARRY_NO_BUILD:-}" ]; then
    say "building the CUDA-enabled binaries in $build (sm_90)"
    cmake -S . -B "$build" -DEASEL_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
          -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
    cmake --build "$build" -j "$(nproc)" --target easel test_ops_gpu bench_ops >/dev/null
  fi
  local stage
  stage=$(mktemp -d)
  trap 'rm -rf "$stage"' RETURN
  mkdir -p "$stage/bin" "$stage/lib"
  cp "$build/easel" "$build/tests/test_ops_gpu" "$build/bench_ops" "$stage/bin/"
  local lib name
  for lib in $(ldd "$stage"/bin/* | awk '/=>/ && $3 ~ /^\// {print $3}' | sort -u); do
    name=$(basename "$lib")
    system_lib "$name" && continue
    cp -L "$lib" "$stage/lib/$name"
  done
  mkdir -p "$out"
  rm -f "$out/carry.tar.xz"
  XZ_OPT="-$xz_level -T0" tar -cJf "$out/carry.tar.xz" -C "$stage" bin lib
  {
    echo "commit: $commit"
    echo "built: $(date -u +%FT%TZ) on $(uname -m), $(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME")"
    echo "nvcc: $(nvcc --version 2>/dev/null | grep -o 'release [0-9.]*' || echo '?'); gcc: $(gcc -dumpversion)"
    echo "cuda archs: 90 (sm_90 + compute_90 PTX)"
    (cd "$stage" && find bin lib -type f | sort | xargs sha256sum) | sed 's/^/file: /'
  } >"$out/manifest.txt"
  say "wrote $out/carry.tar.xz ($(du -h "$out/carry.tar.xz" | cut -f1))"
}

cpu_reference() {
  [ "$ref_steps" -gt 0 ] || { rm -f "$out/cpu-ref.png"; return 0; }
  if [ -f "$out/cpu-ref.png" ] && grep -q "^ref: commit $commit steps $ref_steps " "$out/manifest.txt.ref" 2>/dev/null; then
    say "CPU reference image for $commit exists"; cat "$out/manifest.txt.ref" >>"$out/manifest.txt"; return 0
  fi
  local m
  m=$(mktemp -d)
  say "CPU reference: make-model sd15 (seed 1), then $ref_steps steps at 512x512 on this CPU (minutes)"
  "$build/easel" "${REF_MODEL_ARGS[@]}" --out "$m/sd15" >/dev/null
  local t0=$SECONDS
  "$build/easel" generate --model "$m/sd15" --device cpu --steps "$ref_steps" "${REF_ARGS[@]}" \
    --out "$out/cpu-ref.png" >/dev/null
  local unet_sha
  unet_sha=$(sha256sum "$m"/sd15/unet/*.safetensors | cut -c1-16)
  echo "ref: commit $commit steps $ref_steps seed 42 512x512 euler_a cfg 7.5 model sd15-f16-seed1 unet-sha $unet_sha cpu-seconds $((SECONDS - t0))" \
    | tee "$out/manifest.txt.ref" >>"$out/manifest.txt"
  rm -rf "$m"
}

# A root with glibc and CUDA's runtime libraries only, as the device has them.
verify() {
  if [ "$(id -u)" != 0 ] || ! command -v chroot >/dev/null; then
    say "skipped: the clean-root check needs root and chroot"; return 0
  fi
  local r
  r=$(mktemp -d)
  trap 'rm -rf "$r"' RETURN
  mkdir -p "$r/lib64" "$r/lib/x86_64-linux-gnu" "$r/cuda" "$r/carry" "$r/tmp" "$r/dev"
  cp -L /lib64/ld-linux-x86-64.so.2 "$r/lib64/"
  local l
  for l in libc.so.6 libm.so.6 libdl.so.2 libpthread.so.0 librt.so.1; do
    cp -L "/lib/x86_64-linux-gnu/$l" "$r/lib/x86_64-linux-gnu/"
  done
  local lt
  lt=$(ldd "$build/easel" | awk '/libcublasLt/ {print $3}')
  ln "$(readlink -f "$lt")" "$r/cuda/libcublasLt.so.13" 2>/dev/null || cp -L "$lt" "$r/cuda/libcublasLt.so.13"
  cp -L /dev/null "$r/dev/null" 2>/dev/null || true
  tar -xJf "$out/carry.tar.xz" -C "$r/carry"
  local cr
  cr=$(command -v chroot)
  local envs=(env -i LD_LIBRARY_PATH=/carry/lib:/cuda PATH=/carry/bin HOME=/tmp "$cr" "$r")
  "${envs[@]}" /carry/bin/easel info >"$r/info.txt" 2>&1 ||
    { cat "$r/info.txt" >&2; say "FAIL: easel does not start in a clean root"; return 1; }
  "${envs[@]}" /carry/bin/test_ops_gpu >"$r/ops.txt" 2>&1 ||
    { tail "$r/ops.txt" >&2; say "FAIL: test_ops_gpu does not run in a clean root"; return 1; }
  "${envs[@]}" /carry/bin/bench_ops >"$r/bench.txt" 2>&1 ||
    { tail "$r/bench.txt" >&2; say "FAIL: bench_ops does not run in a clean root"; return 1; }
  "${envs[@]}" /carry/bin/easel make-model --arch tiny --out /tmp/tiny >"$r/gen.txt" 2>&1 &&
    "${envs[@]}" /carry/bin/easel generate --model /tmp/tiny --device cpu --threads 2 \
      --prompt "a room" --seed 1 --steps 2 --width 64 --height 64 --out /tmp/t.png >>"$r/gen.txt" 2>&1 ||
    { tail "$r/gen.txt" >&2; say "FAIL: a tiny CPU render fails in a clean root"; return 1; }
  [ -s "$r/tmp/t.png" ] || { say "FAIL: no image from the clean-root render"; return 1; }
  say "clean root: easel, test_ops_gpu, bench_ops load; a tiny model renders ($(head -n1 "$r/info.txt"))"
}

if [ -z "${GPU_CARRY_VERIFY_ONLY:-}" ]; then
  pack
  cpu_reference
fi
verify
say "carry with the device tool: run(command=\"make gpu-check\", carry=[\".gpu-carry\"])"
