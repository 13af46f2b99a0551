#!/usr/bin/env bash
# `make chaos`: the long chaos runs against BUILD/easel, summaries (JSON) into
# OUT (default build-chaos/): test_fault in the fault build, 100 kill -9s,
# 3 nodes on PostgreSQL with 60 kill -9s and a database crash, 20,000 hostile requests, 2,000 keep-alive pollers x 60 s, then the CI
# pytest file (faults, security). Exits non-zero if any part failed.
#   usage: tests/chaos/run_chaos.sh BUILD [FAULT_BUILD]
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:?build dir}; fbuild=${2:-build-faults}
out=${OUT:-$root/build-chaos}; mkdir -p "$out"
py="$root/.venv/bin/python"; [ -x "$py" ] || py=python3
export EASEL_BUILD=$build EASEL_FAULT_BUILD=$fbuild
status=0
step() { echo; echo "== $1"; shift; (cd "$root" && "$@") || status=1; }
[ -x "$root/$fbuild/tests/test_fault" ] && step "test_fault (fault build)" "$fbuild/tests/test_fault"
step "kill9: 100 kills" "$py" tests/chaos/kill9.py --kills 100 --duration 1800 --json "$out/kill9.json"
step "multinode: 3 nodes on PostgreSQL, 60 kills, a database crash" "$py" tests/chaos/multinode.py --kills 60 --duration 300 --json "$out/multinode.json"
step "badinput: 20,000 requests" "$py" tests/chaos/badinput.py --count 20000 --json "$out/badinput.json"
step "load: 2,000 pollers x 60 s" "$py" tests/chaos/load.py --pollers 2000 --seconds 60 --json "$out/load.json"
step "faults and security (pytest)" "$py" -m pytest -q -rs tests/chaos -k "not kill9 and not badinput and not load and not multinode"
echo; [ $status -eq 0 ] && echo "chaos: all OK (summaries in $out)" || echo "chaos: FAILED (see above)"
exit $status
