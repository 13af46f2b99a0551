#!/usr/bin/env bash
# Builds every libFuzzer target (tests/fuzz/fuzz_*.c) with clang in build-fuzz
# and runs each for SECONDS on a scratch copy of tests/fuzz/corpus/<name>/
# (<name> = the target without "fuzz_"), with tests/fuzz/<target>.dict if
# present. The committed corpus is never modified. Exits 1 if any target
# crashed, leaked, timed out or failed to start; crash inputs are kept in
# build-fuzz/fuzz/artifacts/.
#   usage: tools/fuzz.sh [SECONDS]      (env: FUZZ_BUILD, JOBS, FUZZ_KEEP_CORPUS=1)
#          tools/fuzz.sh build          (build the targets only; tools/fuzz_long.sh uses it)
set -uo pipefail
secs=${1:-60}
case "$secs" in build) ;; ""|*[!0-9]*|0) echo "fuzz.sh: SECONDS must be a whole number >= 1 (libFuzzer reads 0 as forever)" >&2; exit 2 ;; esac
root=$(cd "$(dirname "$0")/.." && pwd)
build=${FUZZ_BUILD:-$root/build-fuzz}
jobs=${JOBS:-$(nproc)}

command -v clang >/dev/null || { echo "fuzz.sh: clang not found" >&2; exit 2; }
CC=clang CXX=clang++ cmake -S "$root" -B "$build" -DEASEL_FUZZ=ON -DEASEL_CUDA=OFF \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  >/dev/null || { echo "fuzz.sh: configure failed" >&2; exit 2; }
cmake --build "$build" --target fuzzers -j "$jobs" 2>&1 |
  grep -vE '^\[ *[0-9]+%\] (Building|Linking|Built)' || true
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "fuzz.sh: build failed" >&2; exit 2; }
[ "$secs" = build ] && exit 0

mkdir -p "$build/fuzz/artifacts"
status=0; ran=0
for src in "$root"/tests/fuzz/fuzz_*.c; do
  [ -f "$src" ] || continue
  target=$(basename "$src" .c); name=${target#fuzz_}; bin="$build/fuzz/$target"; ran=$((ran + 1))
  [ -x "$bin" ] || { echo "== $target: not built"; status=1; continue; }
  scratch=$(mktemp -d "${TMPDIR:-/tmp}/easel-fuzz-$name.XXXXXX")
  [ -d "$root/tests/fuzz/corpus/$name" ] && cp -r "$root/tests/fuzz/corpus/$name/." "$scratch/"
  args=(-max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
        -artifact_prefix="$build/fuzz/artifacts/$target-")
  [ -f "$root/tests/fuzz/$target.dict" ] && args+=(-dict="$root/tests/fuzz/$target.dict")
  log="$build/fuzz/$target.log"
  echo "== $target: ${secs}s, seeds: $(ls "$scratch" | wc -l) files"
  "$bin" "${args[@]}" "$scratch" >"$log" 2>&1; rc=$?
  execs=$(grep -oE 'stat::number_of_executed_units: [0-9]+' "$log" | grep -oE '[0-9]+$')
  cov=$(grep -oE '(DONE|INITED|#[0-9]+).* cov: [0-9]+ ft: [0-9]+' "$log" | tail -n1 |
        grep -oE 'cov: [0-9]+ ft: [0-9]+')
  echo "   exit $rc, execs ${execs:-?}, ${cov:-cov: ?}, corpus $(ls "$scratch" | wc -l) files"
  if [ $rc -ne 0 ]; then
    status=1
    echo "   FAILED: see $log"; grep -E 'ERROR|SUMMARY|runtime error|Test unit written' "$log" | head -n 10
  fi
  if [ "${FUZZ_KEEP_CORPUS:-0}" = 1 ]; then echo "   corpus kept in $scratch"; else rm -rf "$scratch"; fi
done
[ $ran -gt 0 ] || { echo "fuzz.sh: no fuzz targets built" >&2; exit 2; }
exit $status
