"""Turns one bench/run_bench.sh run (a work dir of JSON files) into
bench/results/<date>-<machine>.md + .json and the PNG plots: step time vs
resolution and threads, images/s vs workers. Every figure is given as
easel / peer ratios where a peer ran. Needs matplotlib (the tools venv).
"""

import argparse
import glob
import json
import os
import re

# easel (its fastest precision here) must be at least this many times faster
# per UNet step and per VAE decode than each peer
TARGETS = {"sdcpp": 1.5, "diffusers bf16": 2.0, "diffusers fp32": 1.5}


def load(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def read_work(work):
    d = {"meta": load(os.path.join(work, "meta.json"), {}), "ops": {},
         "http": load(os.path.join(work, "http.json")), "pipeline": {}, "peers": []}
    for p in sorted(glob.glob(os.path.join(work, "ops*.json"))):
        j = load(p)
        if j:
            d["ops"][j.get("precision", os.path.basename(p)[4:-5] or "fp32")] = j
    for p in sorted(glob.glob(os.path.join(work, "pipeline-*.json"))):
        j = load(p)
        if j:
            d["pipeline"][os.path.basename(p)[9:-5]] = j
    try:
        for line in open(os.path.join(work, "peers.jsonl")):
            line = line.strip()
            if line.startswith("{"):
                d["peers"].append(json.loads(line))
    except OSError:
        pass
    for name in ("commands.txt", "notes.txt"):
        try:
            d[name[:-4]] = open(os.path.join(work, name)).read().splitlines()
        except OSError:
            d[name[:-4]] = []
    return d


def easel_run(d, arch, size, threads, precision):
    """easel's latency run of that shape and precision, or None."""
    for j in d["pipeline"].values():
        if (j.get("arch") == arch and j.get("width") == size and j.get("threads") == threads
                and j.get("precision", "fp32") == precision and j.get("steps", 0) <= 4):
            return j
    return None


def cpu_s(j, stage):
    """Median process-CPU seconds of a stage ("unet_step", "decode"), or None."""
    v = (j.get("cpu_ms") or {}).get(stage)
    if isinstance(v, dict):
        v = v.get("median") if v.get("n", 1) else None
    return v / 1e3 if v else None


def easel_best(d, size, threads):
    """(precision, UNet step s, VAE decode s, step cpu-s, decode cpu-s) of easel's
    fastest precision at that size."""
    best = None
    for prec in ("bf16", "fp32"):
        j = easel_run(d, "sd15", size, threads, prec)
        if j:
            st = (prec, j["stages_ms"]["unet_step"]["median"] / 1e3, j["stages_ms"]["decode"]["median"] / 1e3,
                  cpu_s(j, "unet_step"), cpu_s(j, "decode"))
            if best is None or st[1] < best[1]:
                best = st
    return best


def peer_rows(d):
    rows = []
    for p in d["peers"]:
        name = p["peer"] + ("" if p["peer"] == "sdcpp" else f" {p.get('dtype', '')}")
        if "error" in p:
            rows.append({"peer": name, "error": p["error"]})
            continue
        e = easel_best(d, p["size"], p["threads"])
        pdec = p.get("decode_s", p.get("decode_ms", 0) / 1e3)
        rows.append({"peer": name, "kind": p["peer"], "size": p["size"], "threads": p["threads"],
                     "steps": p["steps"], "easel_precision": e[0] if e else None,
                     "peer_s_per_step": p["s_per_step"], "easel_s_per_step": e[1] if e else None,
                     "speedup": (p["s_per_step"] / e[1]) if e else None,
                     "peer_decode_s": pdec, "easel_decode_s": e[2] if e else None,
                     "decode_speedup": (pdec / e[2]) if e and pdec else None,
                     "peer_cpu_step": cpu_s(p, "unet_step"), "easel_cpu_step": e[3] if e else None,
                     "peer_cpu_decode": cpu_s(p, "decode"), "easel_cpu_decode": e[4] if e else None,
                     "target": TARGETS.get(name), "peer_rss_mib": p.get("peak_rss_mib")})
    return rows


def fmt(v, spec="{:.3g}"):
    return "—" if v is None else spec.format(v)


def md_pipeline(d):
    out = ["## Pipeline (easel bench pipeline)", "",
           "| run | arch | precision | size | threads | steps | UNet step (median, min–max) | step cpu-s | encode | decode | decode cpu-s | PNG | total | peak RSS |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, j in d["pipeline"].items():
        s = j["stages_ms"]
        st = s["unet_step"]
        out.append(f"| {name} | {j['arch']} | {j.get('precision', 'fp32')} | {j['width']}² | {j['threads']} | {j['steps']} | "
                   f"{st['median']:.0f} ms ({st['min']:.0f}–{st['max']:.0f}) | {fmt(cpu_s(j, 'unet_step'), '{:.2f}')} | "
                   f"{s['encode']['median']:.0f} ms | "
                   f"{s['decode']['median']:.0f} ms | {fmt(cpu_s(j, 'decode'), '{:.2f}')} | {s['png']['median']:.1f} ms | "
                   f"{s['total']['median']:.0f} ms | {j['peak_rss_mib']:.0f} MiB |")
    tp = [(n, t) for n, j in d["pipeline"].items() for t in j.get("throughput", [])]
    if tp:
        out += ["", "Images/s with workers run concurrently (each worker its own backend and arena):", "",
                "| run | workers × threads | images/s | images | wall |", "|---|---|---|---|---|"]
        for n, t in tp:
            err = f" (error: {t['error']})" if t.get("error") else ""
            out.append(f"| {n} | {t['workers']} × {t['threads']} | {t['images_per_s']:.4f}{err} | "
                       f"{t['images']} | {t['wall_s']:.1f} s |")
    return out


def md_peers(d):
    rows = peer_rows(d)
    out = ["## Easel vs peers, CPU, same random-weight SD1.5 checkpoint, CFG 7.5, euler_a", "",
           "easel in its fastest precision at that size (the easel column says which); the target "
           "applies to the UNet step and to the VAE decode.", "",
           "| peer | size | threads | peer s/step | easel s/step | step speed-up | peer decode s | easel decode s | decode speed-up | target | met |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    if not rows:
        out.append("| (no peer ran) | | | | | | | | | | |")
    for r in rows:
        if "error" in r:
            out.append(f"| {r['peer']} | error: {r['error']} | | | | | | | | | |")
            continue
        ok = [v >= r["target"] for v in (r["speedup"], r["decode_speedup"]) if v is not None and r["target"]]
        met = "—" if not ok else ("yes" if all(ok) else "**no**")
        out.append(f"| {r['peer']} | {r['size']}² | {r['threads']} | {r['peer_s_per_step']:.2f} | "
                   f"{fmt(r['easel_s_per_step'], '{:.2f}')} ({r.get('easel_precision') or '—'}) | "
                   f"{fmt(r['speedup'], '{:.2f}×')} | {fmt(r['peer_decode_s'], '{:.2f}')} | "
                   f"{fmt(r['easel_decode_s'], '{:.2f}')} | {fmt(r['decode_speedup'], '{:.2f}×')} | "
                   f"≥ {fmt(r['target'], '{:.1f}×')} | {met} |")
    cpu = [r for r in rows if "error" not in r and r.get("peer_cpu_step") and r.get("easel_cpu_step")]
    if cpu:
        out += ["", "The same in process CPU-seconds (all threads; less distorted than wall time when "
                "other work shares the cores):", "",
                "| peer | size | peer cpu-s/step | easel cpu-s/step | ratio | peer decode cpu-s | easel decode cpu-s | ratio |",
                "|---|---|---|---|---|---|---|---|"]
        for r in cpu:
            pd, ed = r.get("peer_cpu_decode"), r.get("easel_cpu_decode")
            out.append(f"| {r['peer']} | {r['size']}² | {r['peer_cpu_step']:.2f} | {r['easel_cpu_step']:.2f} | "
                       f"{r['peer_cpu_step'] / r['easel_cpu_step']:.2f}× | {fmt(pd, '{:.2f}')} | {fmt(ed, '{:.2f}')} | "
                       f"{fmt(pd / ed if pd and ed else None, '{:.2f}×')} |")
    return out


def md_http(d):
    h = d["http"]
    if not h:
        return ["## HTTP", "", "(not run)"]
    out = ["## HTTP (easel bench http)", "",
           f"Job start: {h['starts']} sequential POSTs on one keep-alive connection. Status polls: "
           f"wrk -t{h['wrk_threads']} -c{h['wrk_connections']} -d{h['wrk_duration_s']}s, keep-alive, "
           "on the same 2 cores as the server.", "",
           "| target | API | start p50 | start p99 | polls/s | poll p99 | polls vs replica | start p99 vs replica |",
           "|---|---|---|---|---|---|---|---|"]
    for t in h["targets"]:
        out.append(f"| {t['name']} | {t['api']} | {t['start_p50_ms']:.3f} ms | {t['start_p99_ms']:.3f} ms | "
                   f"{t['polls_per_s']:.0f} | {t['poll_p99_ms']:.2f} ms | "
                   f"{fmt(t.get('polls_ratio_vs_peer'), '{:.1f}×')} | {fmt(t.get('start_p99_ratio_vs_peer'), '{:.1f}×')} |")
        if t.get("error"):
            out.append(f"|  ↳ error | {t['error']} | | | | | | |")
    easel = [t for t in h["targets"] if t["name"].startswith("easel")]
    if easel:
        best = max(easel, key=lambda t: t["polls_per_s"])
        worst_start = max(t["start_p99_ms"] for t in easel)
        out += ["", f"Targets: job start p99 < 2 ms → {worst_start:.3f} ms ({'met' if worst_start < 2 else '**not met**'}); "
                f"≥ 30,000 polls/s → {best['polls_per_s']:.0f} ({'met' if best['polls_per_s'] >= 30000 else '**not met**'}); "
                f"≥ 10× the replica → {fmt(best.get('polls_ratio_vs_peer'), '{:.1f}×')}."]
    return out


def md_ops(d):
    if not d["ops"]:
        return ["## Ops", "", "(not run)"]
    out = []
    for prec, ops in d["ops"].items():
        rows = ops.get("results", [])
        out += [f"## Ops, {prec} (easel bench ops, {ops.get('threads')} threads)", "",
                f"Raw GEMM 2048³ on {ops.get('threads')} threads: OpenBLAS sgemm "
                f"{fmt(next((r['gflops'] for r in rows if r['op'].startswith('sgemm') and 'threads' in r['shape']), None), '{:.0f}')} GFLOP/s, "
                f"oneDNN f32 matmul {fmt(ops.get('dnnl_f32_gflops'), '{:.0f}')}, oneDNN bf16 matmul "
                f"{fmt(ops.get('dnnl_bf16_gflops'), '{:.0f}')}; \"vs raw\" is against the raw rate of "
                f"this precision's library ({fmt(ops.get('raw_gemm_gflops'), '{:.0f}')} GFLOP/s).", "",
                "The last column divides the work by the process CPU time instead of the wall time: "
                "what the op does per core-second it actually got (the machine may be shared).", "",
                "| op | shape | ms | cpu-ms | rate | vs raw | GFLOP per cpu-s |", "|---|---|---|---|---|---|---|"]
        for r in rows:
            rate = f"{r['gflops']:.0f} GFLOP/s" if "gflops" in r else f"{r.get('gbps', 0):.1f} GB/s"
            per_cpu = r["gflops"] * r["ms"] / r["cpu_ms"] if "gflops" in r and r.get("cpu_ms") else None
            out.append(f"| {r['op']} | {r['shape']} | {r['ms']:.2f} | {r['cpu_ms']:.2f} | {rate} | "
                       f"{fmt(r.get('vs_raw'), '{:.0%}')} | {fmt(per_cpu, '{:.0f}')} |")
        out.append("")
    return out


def plots(d, out_dir, stem):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made = []
    thr = d["meta"].get("threads", 2)

    def series_easel(key_fn, prec):
        pts = {}
        for j in d["pipeline"].values():
            if j.get("arch") == "sd15" and j.get("precision", "fp32") == prec and j.get("steps", 0) <= 4:
                k = key_fn(j)
                if k is not None and k[1]:
                    pts[k[0]] = j["stages_ms"]["unet_step"]["median"] / 1e3
        return sorted(pts.items())

    def peers_of(pred):
        names = {}
        for r in d["peers"]:
            if "error" not in r and pred(r):
                names.setdefault(r["peer"] + ("" if r["peer"] == "sdcpp" else " " + r.get("dtype", "")), []).append(r)
        return names

    # step time vs resolution
    fig, ax = plt.subplots(figsize=(6, 4))
    for prec in ("bf16", "fp32"):
        e = series_easel(lambda j: (j["width"], j["threads"] == thr), prec)
        if e:
            ax.plot([k for k, _ in e], [v for _, v in e], "o-", label=f"easel {prec} ({thr} threads)")
    for name, rs in peers_of(lambda r: r.get("threads") == thr).items():
        p = sorted((r["size"], r["s_per_step"]) for r in rs)
        ax.plot([k for k, _ in p], [v for _, v in p], "s--", label=f"{name} ({thr} threads)")
    ax.set_xlabel("resolution (px, square)")
    ax.set_ylabel("s per CFG step (SD1.5)")
    ax.set_yscale("log")
    ax.grid(alpha=.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    ax.set_title("UNet step time vs resolution")
    f = f"{stem}-step-vs-resolution.png"
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, f), dpi=110)
    plt.close(fig)
    made.append(f)

    # step time vs threads at 256²
    fig, ax = plt.subplots(figsize=(6, 4))
    for prec in ("bf16", "fp32"):
        e = series_easel(lambda j: (j["threads"], j["width"] == 256), prec)
        if e:
            ax.plot([k for k, _ in e], [v for _, v in e], "o-", label=f"easel {prec}")
    for name, rs in peers_of(lambda r: r.get("size") == 256).items():
        p = sorted((r["threads"], r["s_per_step"]) for r in rs)
        ax.plot([k for k, _ in p], [v for _, v in p], "s--", label=name)
    ax.set_xlabel("threads")
    ax.set_ylabel("s per CFG step, 256² (SD1.5)")
    ax.set_xticks([1, 2])
    ax.grid(alpha=.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    ax.set_title("UNet step time vs threads")
    f = f"{stem}-step-vs-threads.png"
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, f), dpi=110)
    plt.close(fig)
    made.append(f)

    # images/s vs workers
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, j in d["pipeline"].items():
        tp = [t for t in j.get("throughput", []) if not t.get("error")]
        if tp:
            ax.plot([f"{t['workers']}w×{t['threads']}t" for t in tp], [t["images_per_s"] for t in tp], "o-", label=name)
    ax.set_xlabel("workers × threads per worker")
    ax.set_ylabel("images/s")
    ax.set_yscale("log")
    ax.grid(alpha=.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    ax.set_title("Throughput vs workers")
    f = f"{stem}-images-per-s.png"
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, f), dpi=110)
    plt.close(fig)
    made.append(f)
    return made


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    d = read_work(a.work)
    m = d["meta"]
    stem = f"{m.get('date', '0000-00-00')[:10]}-{m.get('machine', 'machine')}"
    os.makedirs(a.out, exist_ok=True)
    pngs = plots(d, a.out, stem)
    md = [f"# easel bench — {m.get('date', '')} — {m.get('machine', '')}", "",
          f"- CPU: {m.get('cpu')} ({m.get('cores')} cores{', AVX-512' if m.get('avx512') else ''}); "
          f"GPU: {m.get('gpu')}{(' (driver ' + m['driver'] + ')') if m.get('driver') else ''}",
          f"- commit {m.get('commit')} (tree {m.get('tree')}); kernel {m.get('kernel')}; "
          f"OPENBLAS_CORETYPE={m.get('openblas_coretype')}; load average at start {' '.join(m.get('load_at_start', []))}",
          "- Random-weight models from `easel make-model` (timings do not depend on weight values).",
          "- Noise: the machine is shared; ±15% run to run is normal. Compare ratios taken in one run."]
    load = float((m.get("load_at_start") or ["0"])[0])
    if load > 1.5 * m.get("cores", 1):
        md.append(f"- **Load average {load:.1f} on {m.get('cores')} cores at start: other work shared the "
                  "CPU, so the speed ratios below are unreliable; rerun `make bench` on a quiet machine.**")
    analysis = stem + "-analysis.md"
    if os.path.exists(os.path.join(a.out, analysis)):
        md.append(f"- Analysis (profiles, back-to-back reruns, next steps): [{analysis}]({analysis})")
    md.append("")
    md += md_peers(d) + [""] + md_pipeline(d) + [""] + md_http(d) + [""] + md_ops(d) + [""]
    if pngs:
        md += ["## Plots", ""] + [f"![{p}]({p})" for p in pngs] + [""]
    if d["notes"]:
        md += ["## Notes from the run", ""] + [f"- {n}" for n in d["notes"]] + [""]
    md += ["## Command lines", "", "```"] + d["commands"] + ["```", ""]
    with open(os.path.join(a.out, stem + ".md"), "w") as f:
        f.write("\n".join(md))
    d["peer_ratios"] = peer_rows(d)
    with open(os.path.join(a.out, stem + ".json"), "w") as f:
        json.dump(d, f, indent=1)
    print(f"report: {os.path.join(a.out, stem + '.md')} (+ .json, {len(pngs)} plots)")


if __name__ == "__main__":
    main()
