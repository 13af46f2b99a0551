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
echo "easel: serving on http://$host:$port (data in $data)"
exec "$easel" serve --data-dir "$data" --host "$host" --port "$port" ${model:+--model "$model"}
