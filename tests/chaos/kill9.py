#!/usr/bin/env python3
"""Crash recovery: runs `easel serve` (tiny model) while jobs are submitted
and canceled continuously, and kill -9s it at random moments (during submits,
while jobs run, while PNGs are written, and during a graceful stop: SIGTERM
then SIGKILL), restarting it on the same data dir each time. At the end,
with the server up once more: every job that got a 202 must reach completed,
failed (with a reason) or canceled; every completed job has a whole PNG;
both workers still run; then, stopped: no temp files, no truncated PNG, no
completed row without its file, no image file no row refers to (a kill
between an image's rename and its row's commit leaves one, which the next
start-up must remove), PRAGMA integrity_check ok.

  kill9.py [--kills 100] [--duration 600] [--seed N] [--build build] [--json out.json]
Exit status 0 when every check holds.
"""
import argparse
import os
import random
import re
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def job_body(rng):
    """Mostly quick jobs, some slow enough to be killed mid-run or mid-PNG."""
    size = rng.choice([64, 64, 64, 128, 256])
    steps = rng.choice([1, 2, 3, 4]) if size == 64 else rng.randint(2, 12)
    return {"prompt": rng.choice(["a chair", "a sunny kitchen", "blue sofa, plants", "loft"]),
            "width": size, "height": size, "steps": steps, "seed": rng.randint(0, 2**31)}


def submitter(srv, tr, stop, seed):
    rng = random.Random(seed)
    while not stop.is_set():
        compat = rng.random() < 0.2
        body = ({"room_type": rng.choice(["living_room", "bedroom", "kitchen"]),
                 "style": "modern"} if compat else job_body(rng))
        if not common.submit_one(srv.port, tr, body, compat, timeout=5):
            time.sleep(0.05)
        time.sleep(rng.uniform(0.02, 0.12))


def canceler(srv, tr, stop, seed):
    rng = random.Random(seed)
    while not stop.is_set():
        time.sleep(rng.uniform(0.2, 0.6))
        jid = tr.pick(rng)
        if not jid:
            continue
        common.cancel_one(srv.port, tr, jid, timeout=5)


def kill_once(srv, rng):
    """Lets the server run a random while, then kills it; returns how."""
    time.sleep(rng.uniform(0.05, 1.5))
    if rng.random() < 0.25:  # during the graceful stop's cleanup
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(rng.uniform(0.0, 0.3))
        how = "term+kill"
    else:
        how = "kill"
    srv.kill9()
    return how


def backlog(srv):
    """Jobs queued + running, from /metrics (None if unreadable)."""
    st, _, text = common.request(srv.port, "GET", "/metrics")
    if st != 200:
        return None
    vals = dict(re.findall(r"^(easel_queue_depth|easel_jobs_running) (\d+)$", text.decode(), re.M))
    return sum(int(v) for v in vals.values()) if len(vals) == 2 else None


def final_check(srv, tr, wait_s):
    """Waits for every accepted job to finish; returns (problems, statuses).
    A job counts as stuck only when the server's backlog (queued + running)
    has not shrunk for wait_s seconds, so a slow or busy machine that is still
    working through the backlog is not mistaken for lost jobs; 20 x wait_s
    caps the whole wait."""
    problems, statuses, reasons = [], {}, {}
    start = last_progress = time.time()
    last_backlog, last_probe = backlog(srv), 0.0
    for jid, kind in sorted(tr.ids.items()):
        while True:
            st, j = common.get_json(srv.port, f"/v1/jobs/{jid}")
            if st != 200 or not j:
                problems.append(f"{jid}: GET answered {st}")
                break
            now = time.time()
            if j["status"] in common.TERMINAL:
                break
            if now - last_probe >= 1.0:
                last_probe, b = now, backlog(srv)
                if b is not None and (last_backlog is None or b < last_backlog):
                    last_progress = now
                last_backlog = b if b is not None else last_backlog
            if now - last_progress > wait_s or now - start > 20 * wait_s:
                break
            time.sleep(0.05)
        if st != 200 or not j:
            continue
        s = j["status"]
        statuses[s] = statuses.get(s, 0) + 1
        if s not in common.TERMINAL:
            problems.append(f"{jid}: still {s} after the wait")
        elif s == "failed":
            if not j.get("error"):
                problems.append(f"{jid}: failed without a reason")
            reasons[j.get("error") or ""] = reasons.get(j.get("error") or "", 0) + 1
        elif s == "completed":
            ist, _, png = common.request(srv.port, "GET", f"/v1/jobs/{jid}/image")
            p = common.png_problem(png) if ist == 200 else f"image answered {ist}"
            if p:
                problems.append(f"{jid}: {p}")
            if kind == "compat":
                cst, c = common.get_json(srv.port, f"/image-status/{jid}")
                if cst != 200 or not c or c.get("status") != "completed" or not c.get("image_url"):
                    problems.append(f"{jid}: /image-status answered {cst} {c}")
    return problems, statuses, reasons


def run(args):
    rng = random.Random(args.seed)
    srv = common.tiny_server(args.build, "easel-kill9-",
                             ["--workers", "2", "--queue-max", "100000", "--retention", "0",
                              "--no-calibrate", "--shutdown-grace", "1s"])
    tr, stop = common.Tracker(), threading.Event()
    srv.start()
    threads = [threading.Thread(target=submitter, args=(srv, tr, stop, args.seed * 10 + i))
               for i in range(2)]
    threads.append(threading.Thread(target=canceler, args=(srv, tr, stop, args.seed * 10 + 9)))
    for t in threads:
        t.start()
    kills, hows, t0, restart_ms = 0, {}, time.time(), []
    try:
        while kills < args.kills and time.time() - t0 < args.duration:
            how = kill_once(srv, rng)
            hows[how] = hows.get(how, 0) + 1
            kills += 1
            r0 = time.time()
            srv.start()
            restart_ms.append((time.time() - r0) * 1000)
    finally:
        stop.set()
        for t in threads:
            t.join()
    problems, statuses, reasons = final_check(srv, tr, args.wait)
    st, h = common.get_json(srv.port, "/healthz")
    if st != 200 or not h or h.get("workers_live") != 2:  # every worker still there
        problems.append(f"healthz after the run: {st} {h}")
    srv.stop_checked(problems, "the final graceful stop")
    dp, rows = common.data_dir_problems(srv.data_dir)
    problems += dp
    summary = {
        "kills": kills, "kinds": hows, "seconds": round(time.time() - t0, 1),
        "requests_sent": tr.sent, "accepted": tr.accepted, "refused": tr.refused,
        # 503 + Retry-After is the designed answer while a restarted server loads its model
        "server_errors": sum(n for k, n in tr.refused.items() if k >= 500 and k != 503),
        "io_errors": tr.io_errors, "cancel_requests_ok": tr.cancels, "final_status": statuses,
        "failure_reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])[:5]),
        "db_rows": rows, "restart_ms_median": round(common.percentile(restart_ms, 0.5), 1),
        "problems": problems[:50], "n_problems": len(problems), "data_dir": srv.data_dir,
    }
    return summary


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kills", type=int, default=100)
    ap.add_argument("--duration", type=float, default=900, help="stop killing after this many s")
    ap.add_argument("--wait", type=float, default=180, help="s for jobs to finish at the end")
    common.add_run_args(ap)
    args = ap.parse_args()
    s = run(args)
    ok = s["n_problems"] == 0 and s["accepted"] > 0 and s["server_errors"] == 0
    return common.report("kill9", s, args.json, ok, f"{s['kills']} kills, "
                         f"{s['accepted']} jobs accepted, {s['n_problems']} problems")


if __name__ == "__main__":
    sys.exit(main())
