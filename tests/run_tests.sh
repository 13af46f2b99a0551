#!/usr/bin/env bash
# Runs every test: the C test programs in BUILD/tests, then the Python tests
# (tests/python, pytest). Each C program ends with "<name>: N passed, N failed,
# N skipped"; pytest's counts are read from its JSON-free summary line. Prints
# one total line at the end and exits non-zero if anything failed.
#   usage: tests/run_tests.sh BUILD_DIR [--c-only]
set -uo pipefail
build=${1:?build dir}
mode=${2:-all}
root=$(cd "$(dirname "$0")/.." && pwd)
passed=0; failed=0; skipped=0; bad=()

add_counts() { # "<...> N passed, N failed, N skipped"
  local line=$1 p f s
  p=$(echo "$line" | grep -oE '[0-9]+ passed' | grep -oE '[0-9]+' || echo 0)
  f=$(echo "$line" | grep -oE '[0-9]+ failed' | grep -oE '[0-9]+' || echo 0)
  s=$(echo "$line" | grep -oE '[0-9]+ skipped' | grep -oE '[0-9]+' || echo 0)
  passed=$((passed + ${p:-0})); failed=$((failed + ${f:-0})); skipped=$((skipped + ${s:-0}))
}

for t in "$build"/tests/test_*; do
  [ -x "$t" ] || continue
  name=$(basename "$t")
  out=$(cd "$root" && "$t" 2>&1); rc=$?
  echo "$out" | grep -vE '^\s*ok ' | sed "s/^/[$name] /" | grep -E 'FAIL|skipped|passed|error|Sanitizer|runtime error' || true
  last=$(echo "$out" | grep -E '[0-9]+ passed, [0-9]+ failed' | tail -n1)
  if [ -z "$last" ]; then
    echo "[$name] crashed or printed no summary (exit $rc):"; echo "$out" | tail -n 20
    failed=$((failed + 1)); bad+=("$name")
  else
    add_counts "$last"
    [ $rc -eq 0 ] || { bad+=("$name"); echo "$out" | tail -n 30; }
  fi
done

if [ "$mode" != "--c-only" ] && [ -d "$root/tests/python" ] && ls "$root"/tests/python/test_*.py >/dev/null 2>&1; then
  py="$root/.venv/bin/python"; [ -x "$py" ] || py=python3
  out=$(cd "$root" && EASEL_BUILD="$build" "$py" -m pytest -q -rs tests/python 2>&1); rc=$?
  echo "$out" | tail -n 40 | sed 's/^/[pytest] /'
  last=$(echo "$out" | grep -E '[0-9]+ (passed|failed|skipped)' | tail -n1)
  add_counts "$last"
  if [ $rc -ne 0 ] && [ $rc -ne 5 ]; then bad+=(pytest); [ -n "$last" ] || failed=$((failed + 1)); fi
fi

# The short chaos variants (tests/chaos: kill -9, hostile input, load, faults,
# security defaults); the fault tests use build-faults/ (make faults-build) if present.
if [ "$mode" != "--c-only" ] && ls "$root"/tests/chaos/test_*.py >/dev/null 2>&1; then
  py="$root/.venv/bin/python"; [ -x "$py" ] || py=python3
  fb=${EASEL_FAULT_BUILD:-$root/build-faults}
  if [ -x "$fb/tests/test_fault" ]; then # the allocation-failure test, in the fault build
    out=$(cd "$root" && "$fb/tests/test_fault" 2>&1); rc=$?
    echo "$out" | grep -E 'FAIL|passed' | sed 's/^/[test_fault (fault build)] /'
    last=$(echo "$out" | grep -E '[0-9]+ passed, [0-9]+ failed' | tail -n1)
    if [ -z "$last" ]; then failed=$((failed + 1)); bad+=(test_fault-faults)
    else add_counts "$last"; [ $rc -eq 0 ] || bad+=(test_fault-faults); fi
  fi
  out=$(cd "$root" && EASEL_BUILD="$build" EASEL_FAULT_BUILD="$fb" "$py" -m pytest -q -rs tests/chaos 2>&1); rc=$?
  echo "$out" | tail -n 40 | sed 's/^/[chaos] /'
  last=$(echo "$out" | grep -E '[0-9]+ (passed|failed|skipped)' | tail -n1)
  add_counts "$last"
  if [ $rc -ne 0 ] && [ $rc -ne 5 ]; then bad+=(chaos); [ -n "$last" ] || failed=$((failed + 1)); fi
fi

[ ${#bad[@]} -eq 0 ] || echo "failing: ${bad[*]}"
echo "total: $passed passed, $failed failed, $skipped skipped"
[ ${#bad[@]} -eq 0 ] && [ $failed -eq 0 ]
