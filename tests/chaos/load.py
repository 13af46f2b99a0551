#!/usr/bin/env python3
"""Load: N keep-alive pollers (asyncio, loopback only) poll job status while a
submitter posts jobs at a steady rate, for a fixed time, against `easel serve`
(tiny model, a small queue so that 429 happens). Passes when there is no
error beyond 429 on submits, every connection stays up, and the server's RSS
is flat (last 10 s vs the 10 s after warm-up). Reports p50/p99/max status
latency (client-measured, so it includes this script's own scheduling).

  load.py [--pollers 2000] [--seconds 60] [--interval 1.0] [--rate 4] [--build build] [--json f]
"""
import argparse
import asyncio
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


class Conn:
    """One keep-alive HTTP/1.1 connection (Content-Length framed answers)."""

    def __init__(self, port):
        self.port, self.r, self.w = port, None, None

    async def open(self):
        self.r, self.w = await asyncio.open_connection("127.0.0.1", self.port)

    def close(self):
        if self.w:
            self.w.close()
        self.r = self.w = None

    async def call(self, method, path, body=None, timeout=10):
        if not self.w:
            await self.open()
        data = json.dumps(body).encode() if body is not None else b""
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
        self.w.write(head.encode() + b"\r\n" + data)
        return await asyncio.wait_for(self._response(), timeout)

    async def _response(self):
        await self.w.drain()
        head = await self.r.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        n, close = 0, False
        for ln in lines[1:]:
            k, _, v = ln.partition(":")
            if k.strip().lower() == "content-length":
                n = int(v)
            elif k.strip().lower() == "connection" and v.strip().lower() == "close":
                close = True
        body = await self.r.readexactly(n) if n else b""
        if close:
            self.close()
        return status, body


class Stats:
    def __init__(self):
        self.lat, self.polls, self.poll_errors, self.conn_errors = [], 0, {}, 0
        self.submits, self.accepted, self.full, self.submit_errors = 0, 0, 0, {}
        self.ids, self.reconnects = [], 0


async def poller(port, st, stop, interval, rng):
    c = Conn(port)
    try:
        await c.open()
    except OSError:
        st.conn_errors += 1
        return
    await asyncio.sleep(rng.uniform(0, interval))
    while not stop.is_set():
        if st.ids:
            jid = rng.choice(st.ids[-200:])
            path = f"/image-status/{jid}" if rng.random() < 0.1 else f"/v1/jobs/{jid}"
            t0 = time.perf_counter()
            try:
                status, _ = await c.call("GET", path)
                st.lat.append((time.perf_counter() - t0) * 1000)
                st.polls += 1
                if status != 200:
                    st.poll_errors[status] = st.poll_errors.get(status, 0) + 1
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
                st.conn_errors += 1
                st.poll_errors[type(e).__name__] = st.poll_errors.get(type(e).__name__, 0) + 1
                c.close()
                st.reconnects += 1
        await asyncio.sleep(interval * rng.uniform(0.8, 1.2))
    c.close()


async def submitter(port, st, stop, rate, rng):
    c = Conn(port)
    while not stop.is_set():
        body = {"prompt": "load test room", "width": 64, "height": 64,
                "steps": rng.randint(2, 4), "seed": rng.randint(0, 1 << 30)}
        try:
            status, data = await c.call("POST", "/v1/jobs", body)
            st.submits += 1
            if status == 202:
                st.accepted += 1
                st.ids.append(json.loads(data)["id"])
            elif status == 429:
                st.full += 1
            else:
                st.submit_errors[status] = st.submit_errors.get(status, 0) + 1
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
            st.submit_errors[type(e).__name__] = st.submit_errors.get(type(e).__name__, 0) + 1
            c.close()
        await asyncio.sleep(1 / rate)
    c.close()


async def drive(srv, args):
    st, stop, rng = Stats(), asyncio.Event(), random.Random(args.seed)
    rss = []
    subs = [asyncio.create_task(submitter(srv.port, st, stop, args.rate, random.Random(args.seed)))]
    polls = []
    for i in range(args.pollers):  # ramp up in batches
        polls.append(asyncio.create_task(poller(srv.port, st, stop, args.interval,
                                                random.Random(rng.random()))))
        if i % 100 == 99:
            await asyncio.sleep(0.05)
    t0 = time.time()
    while time.time() - t0 < args.seconds:
        await asyncio.sleep(1)
        rss.append(srv.rss_kb())
    stop.set()
    await asyncio.gather(*subs, *polls)
    return st, rss, time.time() - t0


def run(args):
    limit = str(args.pollers + 256)
    srv = common.tiny_server(args.build, "easel-load-",
                             ["--workers", "2", "--queue-max", str(args.queue_max), "--conn-limit",
                              limit, "--per-ip-limit", limit, "--conn-timeout", "60s",
                              "--no-calibrate"])
    srv.start()
    st, rss, secs = asyncio.run(drive(srv, args))
    problems = []
    if st.poll_errors:
        problems.append(f"poll errors: {st.poll_errors}")
    if st.submit_errors:
        problems.append(f"submit errors (beyond 429): {st.submit_errors}")
    if not srv.alive():
        problems.append("the server died")
    warm = rss[min(10, len(rss) // 3):min(20, len(rss) // 2 + 1)] or rss[:1]
    last = rss[-10:]
    a, b = sum(warm) / len(warm), sum(last) / len(last)
    growth = (b - a) / 1024
    if growth > args.rss_mb:
        problems.append(f"RSS grew {growth:.1f} MiB from warm-up to the end (> {args.rss_mb})")
    srv.stop_checked(problems)
    return {
        "pollers": args.pollers, "seconds": round(secs, 1), "polls": st.polls,
        "polls_per_s": round(st.polls / secs), "p50_ms": round(common.percentile(st.lat, 0.5), 2),
        "p99_ms": round(common.percentile(st.lat, 0.99), 2),
        "max_ms": round(max(st.lat), 2) if st.lat else None, "submits": st.submits,
        "accepted": st.accepted, "queue_full_429": st.full, "reconnects": st.reconnects,
        "rss_kb": {"warm_avg": round(a), "last10_avg": round(b), "max": max(rss), "growth_mib": round(growth, 2)},
        "problems": problems, "n_problems": len(problems),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pollers", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--interval", type=float, default=1.0, help="s between one poller's polls")
    ap.add_argument("--rate", type=float, default=25, help="job submissions per s")
    ap.add_argument("--queue-max", type=int, default=16)
    ap.add_argument("--rss-mb", type=float, default=16)
    common.add_run_args(ap)
    args = ap.parse_args()
    s = run(args)
    ok = s["n_problems"] == 0 and s["polls"] > 0
    return common.report("load", s, args.json, ok, f"{s['pollers']} pollers x {s['seconds']} s: "
                         f"{s['polls']} polls, p99 {s['p99_ms']} ms, {s['n_problems']} problems")

if __name__ == "__main__":
    sys.exit(main())
