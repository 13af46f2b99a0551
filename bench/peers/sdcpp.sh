#!/usr/bin/env bash
# Peer: stable-diffusion.cpp on the CPU. Builds it from snapshots that live
# outside our tree (never committed), then runs it on our single-file SD1.5
# checkpoint and prints one JSON line with its per-step time.
#
#   sdcpp.sh build                  extract + build into $SDCPP_DIR (default /work/peers/sdcpp)
#   sdcpp.sh run MODEL SIZE STEPS THREADS [SAMPLER] [SEED] [CFG]
#                                   -> {"peer":"sdcpp","size":..,"s_per_step":..,...}
#   sdcpp.sh prepare IN OUT         copy easel's single-file SD1.5 checkpoint, adding the
#                                   VAE encoder sd.cpp insists on (sdcpp_ckpt.py; TOOLS_PY)
#   sdcpp.sh available              exit 0 when the binary is built
#
# Sources: SDCPP_SRC / GGML_SRC may point at git directories (the fetch tool's
# mirrors of leejet/stable-diffusion.cpp and ggml-org/ggml); the ggml commit
# pinned by the sd.cpp submodule is checked out from GGML_SRC.
set -euo pipefail

SDCPP_DIR=${SDCPP_DIR:-/work/peers/sdcpp}
SDCPP_SRC=${SDCPP_SRC:-/work/.mirror/leejet+stable-diffusion.cpp/repo}
GGML_SRC=${GGML_SRC:-/work/.mirror/ggml-org+ggml/repo}
SDCPP_REV=${SDCPP_REV:-HEAD}
BIN="$SDCPP_DIR/build/bin/sd-cli"

die() { echo "sdcpp: $*" >&2; exit 1; }

# Snapshots may lack their largest blobs (media under assets/ and docs/, and the
# tokenizer vocabularies of the non-CLIP text encoders). The build needs none of
# the media; a missing vocabulary becomes a one-byte stub array, which only the
# T5/Gemma/Mistral/Qwen/GPT-OSS tokenizers would read (SD1.5 uses CLIP's, present).
extract_sdcpp() {
  local dst=$1 mode type obj path missing=0
  while IFS=$'\t' read -r meta path; do
    read -r mode type obj <<< "$meta"
    [ "$type" = blob ] || continue
    case "$path" in assets/*|docs/*) continue ;; esac
    mkdir -p "$dst/$(dirname "$path")"
    if git --git-dir="$SDCPP_SRC" cat-file blob "$obj" > "$dst/$path" 2>/dev/null; then
      [ "$mode" = 100755 ] && chmod +x "$dst/$path"
    else
      case "$path" in
        src/tokenizers/vocab/*.hpp) stub_vocab "$path" > "$dst/$path"; missing=$((missing + 1)) ;;
        *) die "snapshot lacks $path, which the build needs" ;;
      esac
    fi
  done < <(git --git-dir="$SDCPP_SRC" ls-tree -r "$SDCPP_REV")
  echo "sdcpp: extracted; $missing absent vocabulary header(s) stubbed" >&2
}

stub_vocab() {
  local base name
  base=$(basename "$1" .hpp)
  case "$base" in
    qwen_merges) name=qwen2_merges_utf8_c_str ;;
    t5) name=t5_tokenizer_json_str ;;
    umt5) name=umt5_tokenizer_json_str ;;
    *_merges) name=${base}_utf8_c_str ;;
    *_vocab) name=${base}_json_utf8_c_str ;;
    *) die "unknown vocabulary header $1" ;;
  esac
  echo "static const unsigned char ${name}[] = {0}; /* stub: absent from the snapshot */"
}

do_build() {
  [ -d "$SDCPP_SRC" ] || die "no stable-diffusion.cpp snapshot at $SDCPP_SRC (fetch leejet/stable-diffusion.cpp)"
  [ -d "$GGML_SRC" ] || die "no ggml snapshot at $GGML_SRC (fetch ggml-org/ggml)"
  case "$SDCPP_DIR" in /work/main*) die "refusing to build inside our tree: $SDCPP_DIR" ;; esac
  mkdir -p "$SDCPP_DIR"
  local src="$SDCPP_DIR/src"
  if [ ! -f "$src/CMakeLists.txt" ]; then
    rm -rf "$src" && mkdir -p "$src"
    extract_sdcpp "$src"
    local ggml_rev
    ggml_rev=$(git --git-dir="$SDCPP_SRC" ls-tree "$SDCPP_REV" ggml | awk '{print $3}')
    git --git-dir="$GGML_SRC" cat-file -e "$ggml_rev^{commit}" 2>/dev/null ||
      die "ggml commit $ggml_rev (pinned by sd.cpp) is not in $GGML_SRC"
    rm -rf "$src/ggml" && mkdir -p "$src/ggml"
    git --git-dir="$GGML_SRC" archive "$ggml_rev" | tar -x -C "$src/ggml"
    git --git-dir="$SDCPP_SRC" rev-parse --short "$SDCPP_REV" > "$SDCPP_DIR/REVISION"
    echo "ggml $ggml_rev" >> "$SDCPP_DIR/REVISION"
  fi
  # Native build (AVX-512 etc. as ggml detects), CPU backend only, the CLI only.
  cmake -S "$src" -B "$SDCPP_DIR/build" -DCMAKE_BUILD_TYPE=Release -DSD_WEBP=OFF -DSD_WEBM=OFF \
        -DGGML_NATIVE=ON -DSD_BUILD_EXAMPLES=ON > "$SDCPP_DIR/cmake.log" 2>&1 ||
    { tail -20 "$SDCPP_DIR/cmake.log"; die "cmake configure failed"; }
  nice -n 10 cmake --build "$SDCPP_DIR/build" --target sd-cli -j "${JOBS:-2}" > "$SDCPP_DIR/build.log" 2>&1 ||
    { tail -30 "$SDCPP_DIR/build.log"; die "build failed (log: $SDCPP_DIR/build.log)"; }
  [ -x "$BIN" ] || die "built, but $BIN is missing"
  echo "sdcpp: built $BIN ($(head -1 "$SDCPP_DIR/REVISION"))"
}

# Prints a JSON line from sd-cli's log: sampling time / steps, VAE decode, peak RSS.
do_run() {
  local model=$1 size=$2 steps=$3 threads=$4 sampler=${5:-euler_a} seed=${6:-42} cfg=${7:-7.5}
  [ -x "$BIN" ] || die "not built ($BIN missing): run '$0 build'"
  [ -f "$model" ] || die "no checkpoint at $model"
  local out log
  out=$(mktemp -d)
  log="$out/sd.log"
  /usr/bin/time -v "$BIN" -m "$model" -p "a cozy living room, scandinavian style" -n "blurry" \
    -W "$size" -H "$size" --steps "$steps" --sampling-method "$sampler" --cfg-scale "$cfg" \
    -s "$seed" -t "$threads" -o "$out/out.png" > "$log" 2>&1 ||
    { tail -20 "$log" >&2; rm -rf "$out"; die "sd-cli failed"; }
  local sample decode total rss_kb
  sample=$(grep -oE 'sampling completed, taking [0-9.]+s' "$log" | tail -1 | grep -oE '[0-9.]+' || true)
  decode=$(grep -oE 'decode_first_stage completed, taking [0-9.]+s' "$log" | tail -1 | grep -oE '[0-9.]+' || true)
  total=$(grep -oE 'generate_image completed in [0-9.]+s' "$log" | tail -1 | grep -oE '[0-9.]+' || true)
  rss_kb=$(grep -oE 'Maximum resident set size \(kbytes\): [0-9]+' "$log" | grep -oE '[0-9]+$' || echo 0)
  [ -n "$sample" ] || { tail -20 "$log" >&2; rm -rf "$out"; die "no 'sampling completed' line in sd-cli's log"; }
  # The progress bar gives each step's seconds ("i/N - 3.21s/it" or "1.50it/s"); the first
  # step also pays sd.cpp's lazy weight upload, so the steady per-step time is the median of
  # the later steps (all steps are in sample_s).
  tr '\r' '\n' < "$log" | grep -oE '[0-9]+/[0-9]+ - [0-9.]+(s/it|it/s)' > "$out/steps.txt" || true
  python3 - "$size" "$steps" "$threads" "$sampler" "$sample" "${decode:-0}" "${total:-0}" "$rss_kb" \
           "$(head -1 "$SDCPP_DIR/REVISION" 2>/dev/null || echo unknown)" "$out/steps.txt" <<'EOF'
import json, re, statistics, sys
size, steps, threads, sampler, sample, decode, total, rss_kb, rev, steps_file = sys.argv[1:]
per = {}
for line in open(steps_file):
    m = re.match(r"(\d+)/\d+ - ([0-9.]+)(s/it|it/s)", line)
    if m:
        v = float(m.group(2))
        per[int(m.group(1))] = v if m.group(3) == "s/it" else (1.0 / v if v > 0 else 0.0)
later = [v for k, v in sorted(per.items()) if k > 1 and v > 0]
mean_all = float(sample) / int(steps)
print(json.dumps({"peer": "sdcpp", "rev": rev, "size": int(size), "steps": int(steps),
                  "threads": int(threads), "sampler": sampler, "cfg": True,
                  "sample_s": float(sample), "step_s": [per[k] for k in sorted(per)],
                  "s_per_step": statistics.median(later) if later else mean_all,
                  "s_per_step_incl_first": mean_all,
                  "decode_s": float(decode), "total_s": float(total),
                  "peak_rss_mib": int(rss_kb) / 1024.0}))
EOF
  rm -rf "$out"
}

case "${1:-}" in
  build) do_build ;;
  run) shift; [ $# -ge 4 ] || die "usage: $0 run MODEL SIZE STEPS THREADS [SAMPLER] [SEED] [CFG]"; do_run "$@" ;;
  prepare)
    [ $# -eq 3 ] || die "usage: $0 prepare IN.safetensors OUT.safetensors"
    "${TOOLS_PY:-$(dirname "$0")/../../.venv-tools/bin/python}" "$(dirname "$0")/sdcpp_ckpt.py" "$2" "$3" ;;
  available) [ -x "$BIN" ] ;;
  *) echo "usage: $0 build | prepare IN OUT | run MODEL SIZE STEPS THREADS [SAMPLER] [SEED] [CFG] | available" >&2; exit 2 ;;
esac
