#!/usr/bin/env bash
# `make run`: starts `easel serve` in the foreground (Ctrl-C stops it gracefully).
# Without a model it makes a tiny random-weight one under DATA/models/tiny on
# first run. Every EASEL_* variable (EASEL_WORKERS, EASEL_TOKEN, ...) applies.
#   usage: tools/run.sh EASEL_BINARY DATA_DIR HOST PORT [MODEL]
set -euo pipefail
easel=${1:?easel binary}
data=${2:?data dir}
host=${3:-127.0.0.1}
port=${4:-8080}
model=${5:-}
mkdir -p "$data"
if [ -n "$model" ]; then
  # check the model before serving and say what it is (family, size, defaults)
  if ! found=$("$easel" info --model "$model" 2>&1); then
    echo "easel: MODEL=$model cannot be served:" >&2
    printf '%s\n' "$found" | grep -v '^\(easel [0-9]\|build:\|blas:\|cpu\|cuda:\|precision \|[0-9]\{4\}-[0-9][0-9]-\)' >&2
    echo "easel: see README.md -> Real models (which checkpoints work, how to check one)" >&2
    exit 2
  fi
  echo "easel: MODEL=$model:"
  printf '%s\n' "$found" | sed -n '/^model:/,$p' | tail -n +2
fi
echo "easel: serving on http://$host:$port (data in $data)"
exec "$easel" serve --data-dir "$data" --host "$host" --port "$port" ${model:+--model "$model"}
