#!/usr/bin/env python3
"""Status reads with a big table of finished jobs (issue 13 #4): submit N
jobs with ~4 KB prompts and cancel each (a client that starts and abandons
jobs), then time, with one keep-alive connection, GET of one pending job,
GET /v1/jobs?status=pending&limit=100 and /healthz; and the server's RSS
growth. Run it against two builds to compare (e.g. 33120ee and today).

  poll_backlog.py --build DIR [--jobs 20000] [--reads 1000] [--args "--max-jobs 0"] [--json F]
"""
import argparse
import http.client
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "chaos"))
import common  # noqa: E402


def timed(conn, method, path, body=None, n=1):
    out = []
    for _ in range(n):
        h = {"Content-Type": "application/json"} if body is not None else {}
        t0 = time.perf_counter()
        conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=h)
        r = conn.getresponse()
        data = r.read()
        out.append((time.perf_counter() - t0) * 1000)
    return out, r.status, data


def pct(xs, q):
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 3)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", required=True)
    ap.add_argument("--jobs", type=int, default=20000)
    ap.add_argument("--reads", type=int, default=1000)
    ap.add_argument("--args", default="", help="extra easel serve flags")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    extra = a.args.split() if a.args else []
    srv = common.tiny_server(a.build, "easel-backlog-",
                             ["--workers", "1", "--queue-max", "100000", "--retention", "0",
                              "--no-calibrate", *extra])
    srv.start()
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    prompt = ("a cozy living room with a fireplace, " * 120)[:4000]
    # one job that stays pending behind a long one, read throughout
    _, st, data = timed(conn, "POST", "/v1/jobs",
                        {"prompt": "hold", "width": 512, "height": 512, "steps": 150})
    hold = json.loads(data)["id"]
    _, st, data = timed(conn, "POST", "/v1/jobs", {"prompt": "waiting", "steps": 1})
    waiting = json.loads(data)["id"]
    rss0 = srv.rss_kb()
    t0 = time.time()
    refused = 0
    for _ in range(a.jobs):
        _, st, data = timed(conn, "POST", "/v1/jobs", {"prompt": prompt, "steps": 1})
        if st != 202:
            refused += 1
            continue
        jid = json.loads(data)["id"]
        timed(conn, "POST", f"/v1/jobs/{jid}/cancel")
    fill_s = time.time() - t0
    rss1 = srv.rss_kb()
    get_ms, st1, _ = timed(conn, "GET", f"/v1/jobs/{waiting}", n=a.reads)
    list_ms, st2, body = timed(conn, "GET", "/v1/jobs?status=pending&limit=100", n=a.reads // 10)
    health_ms, st3, _ = timed(conn, "GET", "/healthz", n=a.reads // 10)
    timed(conn, "POST", f"/v1/jobs/{hold}/cancel")
    srv.stop()
    out = {
        "build": a.build, "git": os.popen(f"{common.easel_binary(a.build)} --version").read().strip(),
        "args": extra, "jobs_submitted_and_canceled": a.jobs, "refused": refused,
        "fill_seconds": round(fill_s, 1), "rss_growth_mib": round((rss1 - rss0) / 1024, 1),
        "get_pending_job_ms": {"p50": pct(get_ms, 0.5), "p99": pct(get_ms, 0.99)},
        "list_pending_100_ms": {"p50": pct(list_ms, 0.5), "p99": pct(list_ms, 0.99)},
        "healthz_ms": {"p50": pct(health_ms, 0.5), "p99": pct(health_ms, 0.99)},
        "statuses": [st1, st2, st3],
    }
    print(json.dumps(out, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
