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

TARGETS = {"sdcpp": 1.5, "diffusers": 2.0}  # easel must be at least this many times faster per step


def load(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def read_work(work):
    d = {"meta": load(os.path.join(work, "meta.json"), {}), "ops": load(os.path.join(work, "ops.json")),
         "http": load(os.path.join(work, "http.json")), "pipeline": {}, "peers": []}
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


def easel_step(d, arch, size, threads):
    """Median UNet (CFG) step of easel, in seconds, or None."""
    for j in d["pipeline"].values():
        if j.get("arch") == arch and j.get("width") == size and j.get("threads") == threads:
            return j["stages_ms"]["unet_step"]["median"] / 1e3
    return None


def peer_rows(d):
    rows = []
    for p in d["peers"]:
        if "error" in p:
            rows.append({"peer": p["peer"], "error": p["error"]})
            continue
        e = easel_step(d, "sd15", p["size"], p["threads"])
        rows.append({"peer": p["peer"] + ("" if p["peer"] == "sdcpp" else f" {p.get('dtype', '')}"),
                     "kind": p["peer"], "size": p["size"], "threads": p["threads"], "steps": p["steps"],
                     "peer_s_per_step": p["s_per_step"], "easel_s_per_step": e,
                     "speedup": (p["s_per_step"] / e) if e else None,
                     "target": TARGETS.get(p["peer"]), "peer_decode_s": p.get("decode_s", p.get("decode_ms", 0) / 1e3),
                     "peer_rss_mib": p.get("peak_rss_mib")})
    return rows


def fmt(v, spec="{:.3g}"):
    return "—" if v is None else spec.format(v)


def md_pipeline(d):
    out = ["## Pipeline (easel bench pipeline)", "",
           "| run | arch | size | threads | steps | UNet step (median, min–max) | encode | decode | PNG | total | peak RSS |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, j in d["pipeline"].items():
        s = j["stages_ms"]
        st = s["unet_step"]
        out.append(f"| {name} | {j['arch']} | {j['width']}² | {j['threads']} | {j['steps']} | "
                   f"{st['median']:.0f} ms ({st['min']:.0f}–{st['max']:.0f}) | {s['encode']['median']:.0f} ms | "
                   f"{s['decode']['median']:.0f} ms | {s['png']['median']:.1f} ms | "
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
           "| peer | size | threads | peer s/step | easel s/step | easel speed-up | target | met |",
           "|---|---|---|---|---|---|---|---|"]
    if not rows:
        out.append("| (no peer ran) | | | | | | | |")
    for r in rows:
        if "error" in r:
            out.append(f"| {r['peer']} | error: {r['error']} | | | | | | |")
            continue
        met = "—" if r["speedup"] is None or r["target"] is None else ("yes" if r["speedup"] >= r["target"] else "**no**")
        out.append(f"| {r['peer']} | {r['size']}² | {r['threads']} | {r['peer_s_per_step']:.2f} | "
                   f"{fmt(r['easel_s_per_step'], '{:.2f}')} | {fmt(r['speedup'], '{:.2f}×')} | "
                   f"≥ {fmt(r['target'], '{:.1f}×')} | {met} |")
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
    ops = d["ops"]
    if not ops:
        return ["## Ops", "", "(not run)"]
    rows = ops.get("ops", ops.get("results", [])) if isinstance(ops, dict) else ops
    if not rows or not isinstance(rows, list):
        return ["## Ops", "", "```", json.dumps(ops, indent=1)[:3000], "```"]
    keys = []
    for r in rows:
        keys += [k for k, v in r.items() if k not in keys and not isinstance(v, (dict, list))]
    out = ["## Ops (easel bench ops --quick)", ""]
    if isinstance(ops, dict):
        extra = {k: v for k, v in ops.items() if not isinstance(v, (dict, list))}
        if extra:
            out += [", ".join(f"{k}: {v}" for k, v in extra.items()), ""]
    out += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        out.append("| " + " | ".join(fmt(r.get(k), "{:.4g}") if isinstance(r.get(k), float) else str(r.get(k, ""))
                                     for k in keys) + " |")
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

    def series_easel(key_fn):
        pts = {}
        for j in d["pipeline"].values():
            if j.get("arch") == "sd15":
                k = key_fn(j)
                if k is not None:
                    pts[k[0]] = j["stages_ms"]["unet_step"]["median"] / 1e3 if k[1] else None
        return sorted((k, v) for k, v in pts.items() if v)

    # step time vs resolution
    fig, ax = plt.subplots(figsize=(6, 4))
    e = series_easel(lambda j: (j["width"], j["threads"] == thr))
    if e:
        ax.plot([k for k, _ in e], [v for _, v in e], "o-", label=f"easel ({thr} threads)")
    for peer in ("sdcpp", "diffusers"):
        p = sorted((r["size"], r["s_per_step"]) for r in d["peers"] if r.get("peer") == peer and r.get("threads") == thr)
        if p:
            ax.plot([k for k, _ in p], [v for _, v in p], "s--", label=f"{peer} ({thr} threads)")
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
    e = series_easel(lambda j: (j["threads"], j["width"] == 256))
    if e:
        ax.plot([k for k, _ in e], [v for _, v in e], "o-", label="easel")
    for peer in ("sdcpp", "diffusers"):
        p = sorted((r["threads"], r["s_per_step"]) for r in d["peers"] if r.get("peer") == peer and r.get("size") == 256)
        if p:
            ax.plot([k for k, _ in p], [v for _, v in p], "s--", label=peer)
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
