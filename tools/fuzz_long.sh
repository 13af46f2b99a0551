#!/usr/bin/env bash
# The long fuzz campaign (issue 9: "a >= 1 hour run of each target, done once").
# Runs every libFuzzer target at the same time, each on a scratch copy of its
# committed corpus, and stops each one (SIGINT: libFuzzer prints its final
# stats) once it has used CPU_SECONDS of CPU time. CPU time, not wall time, is
# the budget, so running five targets on a 2-core machine still gives each one
# a full hour of fuzzing; the wall time stretches instead. A status line per
# target is printed every 5 minutes; the summary (execs, cov, ft, corpus,
# crashes) goes to stdout and $OUT_DIR/summary.txt.
#   usage: tools/fuzz_long.sh [CPU_SECONDS]   (default 3600)
#   env:   FUZZ_BUILD (build-fuzz), OUT_DIR (out/fuzz-long), NICE (10)
# Crash inputs are written to $OUT_DIR/artifacts/; the grown corpora stay in
# $OUT_DIR/corpus/<name>/ (never written back to tests/fuzz/corpus).
set -uo pipefail
budget=${1:-3600}
root=$(cd "$(dirname "$0")/.." && pwd)
build=${FUZZ_BUILD:-$root/build-fuzz}
out=${OUT_DIR:-$root/out/fuzz-long}
nice_level=${NICE:-10}

FUZZ_BUILD=$build "$root/tools/fuzz.sh" build >/dev/null || { echo "fuzz_long: build failed" >&2; exit 2; }
mkdir -p "$out/artifacts" "$out/corpus"
hz=$(getconf CLK_TCK)

cpu_seconds() { # utime + stime of a live pid, in whole seconds
  local f; f=$(cut -d')' -f2- "/proc/$1/stat" 2>/dev/null) || { echo -1; return; }
  set -- $f; echo $(( (${12} + ${13}) / hz ))
}

declare -A pid_of log_of start_of
for src in "$root"/tests/fuzz/fuzz_*.c; do
  target=$(basename "$src" .c); name=${target#fuzz_}; bin="$build/fuzz/$target"
  [ -x "$bin" ] || { echo "fuzz_long: $target not built" >&2; exit 2; }
  rm -rf "$out/corpus/$name"; mkdir -p "$out/corpus/$name"
  cp -r "$root/tests/fuzz/corpus/$name/." "$out/corpus/$name/"
  args=(-max_total_time=$((budget * 10)) -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
        -artifact_prefix="$out/artifacts/$target-")
  [ -f "$root/tests/fuzz/$target.dict" ] && args+=(-dict="$root/tests/fuzz/$target.dict")
  log_of[$target]="$out/$target.log"
  nice -n "$nice_level" "$bin" "${args[@]}" "$out/corpus/$name" >"${log_of[$target]}" 2>&1 &
  pid_of[$target]=$!; start_of[$target]=$(date +%s)
  echo "== $target: pid ${pid_of[$target]}, budget ${budget} CPU s, seeds $(ls "$root/tests/fuzz/corpus/$name" | wc -l)"
done

declare -A wall_of cpu_of rc_of
last_report=$(date +%s)
while :; do
  live=0
  for t in "${!pid_of[@]}"; do
    p=${pid_of[$t]}; [ -n "${rc_of[$t]:-}" ] && continue
    c=$(cpu_seconds "$p")
    if [ "$c" -ge 0 ] && kill -0 "$p" 2>/dev/null; then
      cpu_of[$t]=$c
      if [ "$c" -ge "$budget" ]; then kill -INT "$p" 2>/dev/null; fi
      live=$((live + 1))
    else
      wait "$p"; rc_of[$t]=$?; wall_of[$t]=$(( $(date +%s) - ${start_of[$t]} ))
    fi
  done
  [ $live -eq 0 ] && break
  if [ $(( $(date +%s) - last_report )) -ge 300 ]; then
    last_report=$(date +%s)
    for t in $(printf '%s\n' "${!pid_of[@]}" | sort); do
      [ -n "${rc_of[$t]:-}" ] && continue
      line=$(grep -oE '#[0-9]+.*cov: [0-9]+ ft: [0-9]+ corp: [0-9]+' "${log_of[$t]}" | tail -n1)
      echo "$(date -u +%H:%M) $t cpu ${cpu_of[$t]:-0}s ${line:-starting}"
    done
  fi
  sleep 5
done

{
  printf '%-20s %6s %7s %12s %7s %7s %7s %8s %s\n' target exit cpu_s execs exec/s cov ft corpus crashes
  for t in $(printf '%s\n' "${!pid_of[@]}" | sort); do
    log=${log_of[$t]}; name=${t#fuzz_}
    execs=$(grep -oE 'stat::number_of_executed_units: [0-9]+' "$log" | grep -oE '[0-9]+$')
    last=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -n1)
    crashes=$(ls "$out/artifacts" | grep -c "^$t-" || true)
    rate=$(( ${execs:-0} / (${cpu_of[$t]:-1} > 0 ? ${cpu_of[$t]:-1} : 1) ))
    printf '%-20s %6s %7s %12s %7s %7s %7s %8s %s\n' "$t" "${rc_of[$t]}" "${cpu_of[$t]:-?}" \
      "${execs:-?}" "$rate" "$(echo "$last" | awk '{print $2}')" "$(echo "$last" | awk '{print $4}')" \
      "$(ls "$out/corpus/$name" | wc -l)" "$crashes"
    echo "   wall ${wall_of[$t]} s; log $log"
  done
} | tee "$out/summary.txt"
# libFuzzer exits 72 when interrupted (our stop signal); anything else, or an artifact, fails.
status=0
for t in "${!pid_of[@]}"; do
  case "${rc_of[$t]}" in 0|72) ;; *) status=1 ;; esac
done
[ -z "$(ls "$out/artifacts")" ] || status=1
exit $status
