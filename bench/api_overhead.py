#!/usr/bin/env python3
"""The cost of each API over the same job (issue 20's numbers): one tiny-model
job (64x64, --steps steps, fixed seed) requested N times through each way a
client can ask, interleaved so the machine's noise falls on all alike:

  native-poll   POST /v1/jobs, GET /v1/jobs/{id} every 10 ms, GET .../image
  native-wait   POST /v1/jobs with Prefer: wait=60, GET .../image
  openai        the official `openai` package: images.generate(b64_json)
  a1111         the `webuiapi` package: txt2img

and webhook delivery latency: a loopback receiver's arrival time minus the
job's finished_at (both this machine's clock), p50/p99 over the jobs.

  api_overhead.py [--build build] [--n 30] [--steps 4] [--json F]

Prints a table of end-to-end client latency (p50, p90, p99 ms) per way, and the
difference of each p50 to native-poll's.
"""
import argparse
import base64
import http.server
import json
import os
import platform
import subprocess
import sys
import threading
import time
from datetime import datetime

import requests

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "chaos"))
import common  # noqa: E402


def pct(xs, q):
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 2)


def cpu_line():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in out.splitlines()
                      if ln.startswith("Model name")), platform.processor())
        flags = next((ln.split(":", 1)[1].split() for ln in out.splitlines()
                      if ln.startswith("Flags")), [])
        keep = [f for f in flags if f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")]
        return f"{model} ({os.cpu_count()} cpus; {' '.join(keep)})"
    except OSError:
        return platform.processor()


class Receiver:
    def __init__(self):
        self.arrivals = {}
        rec = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                t = time.time()
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if body.get("type") == "job.completed":
                    rec.arrivals.setdefault(body["data"]["id"], (t, body["data"]))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"


def iso_s(s):
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    import openai
    import webuiapi

    srv = common.tiny_server(a.build, "easel-apibench-",
                             ["--workers", "1", "--no-calibrate", "--default-size", "64x64",
                              "--webhook-allow", "127.0.0.1",
                              "--webhook-secret", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"])
    srv.start()
    base = f"http://127.0.0.1:{srv.port}"
    rec = Receiver()
    sess = requests.Session()
    oa = openai.OpenAI(base_url=f"{base}/v1", api_key="none")
    wa = webuiapi.WebUIApi(host="127.0.0.1", port=srv.port)
    job = {"prompt": "a lighthouse at dusk", "width": 64, "height": 64, "steps": a.steps,
           "seed": 7, "sampler": "euler"}

    def native_poll():
        r = sess.post(f"{base}/v1/jobs", json=dict(job, webhook=rec.url,
                                                   webhook_events_filter=["completed"]))
        jid = r.json()["id"]
        while sess.get(f"{base}/v1/jobs/{jid}").json()["status"] != "completed":
            time.sleep(0.01)
        return sess.get(f"{base}/v1/jobs/{jid}/image").content

    def native_wait():
        r = sess.post(f"{base}/v1/jobs", json=job, headers={"Prefer": "wait=60"})
        assert r.status_code == 200, r.text
        return sess.get(f"{base}/v1/jobs/{r.json()['id']}/image").content

    def via_openai():
        r = oa.images.generate(model="dall-e-2", prompt=job["prompt"], size="64x64",
                               response_format="b64_json",
                               extra_body={"steps": a.steps, "seed": 7, "sampler": "euler"})
        return base64.b64decode(r.data[0].b64_json)

    def via_a1111():
        r = wa.txt2img(prompt=job["prompt"], width=64, height=64, steps=a.steps, seed=7,
                       sampler_name="Euler", scheduler="Automatic", cfg_scale=7.5)
        return r.image

    ways = {"native-poll": native_poll, "native-wait": native_wait, "openai": via_openai,
            "a1111": via_a1111}
    times = {k: [] for k in ways}
    for f in ways.values():  # warm-up
        f()
    for _ in range(a.n):
        for k, f in ways.items():
            t0 = time.perf_counter()
            f()
            times[k].append((time.perf_counter() - t0) * 1000)
    time.sleep(1.0)
    lat = [(t - iso_s(d["finished_at"])) * 1000 for t, d in rec.arrivals.values()]
    srv.stop()

    summary = {"cpu": cpu_line(), "n": a.n, "steps": a.steps, "size": "64x64",
               "ways": {k: {"p50_ms": pct(v, 0.5), "p90_ms": pct(v, 0.9), "p99_ms": pct(v, 0.99)}
                        for k, v in times.items()},
               "webhook_latency_ms": {"n": len(lat), "p50": pct(lat, 0.5), "p99": pct(lat, 0.99),
                                      "max": round(max(lat), 2) if lat else None}}
    ref = summary["ways"]["native-poll"]["p50_ms"]
    print(f"# {summary['cpu']}; tiny model, 64x64, {a.steps} steps, n={a.n} each, interleaved")
    print(f"{'way':<12} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'p50 - native-poll':>18}")
    for k, v in summary["ways"].items():
        print(f"{k:<12} {v['p50_ms']:>8} {v['p90_ms']:>8} {v['p99_ms']:>8} "
              f"{round(v['p50_ms'] - ref, 2):>18}")
    w = summary["webhook_latency_ms"]
    print(f"webhook delivery after finished_at: n={w['n']} p50 {w['p50']} ms, p99 {w['p99']} ms, "
          f"max {w['max']} ms")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
