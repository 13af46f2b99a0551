#!/usr/bin/env python3
"""Assembles the gpu-check report from the stage results tools/gpu_check.sh
leaves in its state directory: stage statuses and times (stages.tsv), the
op timings of bench_ops and PyTorch (bench_ops.json, torch_ops.json: joined on
op + shape into a ratio table), the pipeline bench (pipeline.json), the PSNR
of the GPU image against the CPU's (psnr.txt) and each stage's markdown
fragment (<stage>.md). Writes the markdown report and a JSON summary; run
after every stage, so a run cut short still leaves what it measured.
    usage: report.py STATE_DIR OUT.md OUT.json"""
import json
import os
import sys


def load(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def text(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def main():
    state, out_md, out_json = sys.argv[1:4]
    meta = load(os.path.join(state, "meta.json"), {})
    stages = []
    for line in text(os.path.join(state, "stages.tsv")).splitlines():
        name, status, secs = (line.split("\t") + ["", ""])[:3]
        stages.append({"stage": name, "status": status, "seconds": float(secs or 0)})
    ops = load(os.path.join(state, "bench_ops.json"), []) or []
    peer = {(r["op"], r["shape"]): r for r in load(os.path.join(state, "torch_ops.json"), []) or []}
    pipeline = load(os.path.join(state, "pipeline.json"))
    psnr = text(os.path.join(state, "psnr.txt")).strip()

    md = [f"# GPU check {meta.get('date', '')}", ""]
    for k in ("card", "driver", "commit", "command", "binaries", "budget"):
        if meta.get(k):
            md.append(f"- {k}: {meta[k]}")
    md += ["", "## Stages", "", "| stage | result | s |", "|---|---|---|"]
    md += [f"| {s['stage']} | {s['status']} | {s['seconds']:.0f} |" for s in stages]
    ratios = []
    if ops:
        md += ["", "## Ops at SD1.5 512² shapes: easel vs PyTorch on this card", "",
               "| op | shape | easel ms | torch ms | easel/torch |", "|---|---|---|---|---|"]
        for r in ops:
            p = peer.get((r["op"], r["shape"]))
            pm = p["ms"] if p and p.get("ms", -1) > 0 else None
            ratio = r["ms"] / pm if pm and r["ms"] > 0 else None
            ratios.append({**r, "torch_ms": pm, "ratio": ratio})
            md.append(f"| {r['op']} | {r['shape']} | {r['ms']:.3f} | "
                      f"{'' if pm is None else f'{pm:.3f}'} | "
                      f"{'' if ratio is None else f'{ratio:.2f}'} |")
    if pipeline:
        st = pipeline.get("stages_ms", {})
        med = lambda k: st.get(k, {}).get("median")
        md += ["", "## Pipeline (easel bench pipeline --device cuda)", ""]
        md.append(f"- {pipeline.get('arch')} {pipeline.get('width')}x{pipeline.get('height')}, "
                  f"{pipeline.get('steps')} steps, {pipeline.get('sampler')}, guidance "
                  f"{pipeline.get('guidance')}; weights {pipeline.get('weights_mib', 0):.0f} MiB, "
                  f"load {pipeline.get('load_ms', 0):.0f} ms")
        for k in ("encode", "unet_step", "sample", "decode", "end_to_end"):
            if med(k) is not None:
                md.append(f"- {k}: {med(k):.2f} ms (median)")
        for t in pipeline.get("throughput", []) or []:
            md.append(f"- images/s, {t.get('workers')} worker(s): {t.get('images_per_s')}")
    if psnr:
        md += ["", "## Same seed, CPU vs GPU", "", f"- {psnr}"]
    for s in stages:
        frag = text(os.path.join(state, s["stage"] + ".md")).strip()
        if frag:
            md += ["", f"## {s['stage']}: details", "", frag]
    md.append("")
    with open(out_md, "w") as f:
        f.write("\n".join(md))
    with open(out_json, "w") as f:
        json.dump({"meta": meta, "stages": stages, "ops": ratios, "pipeline": pipeline,
                   "psnr": psnr}, f, indent=1)


if __name__ == "__main__":
    main()
