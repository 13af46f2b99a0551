#!/usr/bin/env python3
"""Several nodes on one queue, under chaos: N `easel serve` processes (tiny
model, --workers 2, a short --lease) on one real PostgreSQL server started
here (tests/chaos/pg.py). Jobs are submitted (native and the seed's route)
and canceled continuously through random nodes while random nodes get kill
-9 (or SIGTERM then kill -9) and restart, node 0 with a stable --node-id
(its restart requeues its own jobs at once), the others with a new id
each time (their jobs wait for their leases); once, the database itself is
stopped immediately (a crash) and started again. The database's lease
owners are sampled all along.

At the end, every node up: every job that got a 202 is completed, failed
with a reason, or canceled; every completed job's image is read from every
node (whole PNG, the same bytes everywhere; the seed's status route for its
jobs); the database holds an image row for each completed job and none
other (nothing orphaned); no job changed owner without a lease expiry or a
start-up recovery to explain it (owner changes <= lease expiries +
recoveries: "runs twice only after a lease expired", counted and reported);
no 5xx but the designed 503s (while the database or a node is down).

  multinode.py [--nodes 3] [--kills 60] [--duration 300] [--lease 3s] [--seed N]
               [--build build] [--json out.json]
Exit status 0 when every check holds.
"""
import argparse
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import pg as pgmod  # noqa: E402


def alive_node(nodes, rng):
    up = [s for s in nodes if s.alive()]
    return rng.choice(up) if up else None


def submitter(nodes, tr, stop, seed):
    rng = random.Random(seed)
    while not stop.is_set():
        s = alive_node(nodes, rng)
        if not s:
            time.sleep(0.05)
            continue
        compat = rng.random() < 0.2
        size = rng.choice([64, 64, 64, 128])
        body = ({"room_type": rng.choice(["living_room", "bedroom", "kitchen"]), "style": "modern"}
                if compat else {"prompt": "a chair", "width": size, "height": size,
                                "steps": rng.randint(1, 10), "seed": rng.randint(0, 2**31)})
        if not common.submit_one(s.port, tr, body, compat, timeout=10):
            time.sleep(0.05)
        time.sleep(rng.uniform(0.02, 0.1))


def canceler(nodes, tr, stop, seed):
    rng = random.Random(seed)
    while not stop.is_set():
        time.sleep(rng.uniform(0.3, 0.8))
        jid, s = tr.pick(rng), alive_node(nodes, rng)
        if not jid or not s:
            continue
        common.cancel_one(s.port, tr, jid, timeout=10)


def sampler(pg, url, stop, owners):
    """Every 50 ms: the owner of each processing job (job -> [owners in order])."""
    while not stop.is_set():
        try:
            rows = pg.sql(url, "SELECT id, lease_owner FROM easel_jobs WHERE status='processing'")
        except RuntimeError:  # the database is down for a moment
            time.sleep(0.1)
            continue
        for jid, owner in rows:
            node = owner.split("/")[0]
            seen = owners.setdefault(jid, [])
            if not seen or seen[-1] != node:
                seen.append(node)
        time.sleep(0.05)


def recovered_count(nodes):
    """Jobs requeued by start-up recoveries, and by graceful stops (not an
    attempt), from every node's log."""
    n = stops = 0
    for s in nodes:
        log = s.tail(10**8)
        for m in re.finditer(r"recovered after a stop: (\d+) requeued", log):
            n += int(m.group(1))
        stops += len(re.findall(r"goes back to the queue \(stopping\)", log))
    return n, stops


def final_check(pg, url, nodes, tr, wait_s):
    problems, statuses, reasons = [], {}, {}
    deadline = time.time() + wait_s
    while time.time() < deadline:  # the backlog drains (the database's own count)
        left = pg.sql(url, "SELECT count(*) FROM easel_jobs WHERE status IN "
                           "('pending','processing')")[0][0]
        if left == "0":
            break
        time.sleep(0.5)
    rng = random.Random(7)
    for jid, kind in sorted(tr.ids.items()):
        s = rng.choice(nodes)
        st, j = common.get_json(s.port, f"/v1/jobs/{jid}")
        if st != 200 or not j:
            problems.append(f"{jid}: GET on {s.port} answered {st}")
            continue
        status = j["status"]
        statuses[status] = statuses.get(status, 0) + 1
        if status not in common.TERMINAL:
            db = pg.sql(url, "SELECT status, coalesce(lease_owner, ''), attempts FROM "
                             f"easel_jobs WHERE id = '{jid}'")
            problems.append(f"{jid}: still {status} on {s.port} after the wait "
                            f"(the database: {db[0] if db else 'no row'})")
        elif status == "failed":
            if not j.get("error"):
                problems.append(f"{jid}: failed without a reason")
            reasons[j.get("error") or ""] = reasons.get(j.get("error") or "", 0) + 1
        elif status == "completed":
            bodies = set()
            for node in nodes:  # from every node
                ist, _, png = common.request(node.port, "GET", f"/v1/jobs/{jid}/image")
                p = common.png_problem(png) if ist == 200 else f"image answered {ist}"
                if p:
                    problems.append(f"{jid} on {node.port}: {p}")
                bodies.add(png)
            if len(bodies) != 1:
                problems.append(f"{jid}: the nodes serve different bytes")
            if kind == "compat":
                cst, c = common.get_json(nodes[0].port, f"/image-status/{jid}")
                if cst != 200 or not c or c.get("status") != "completed":
                    problems.append(f"{jid}: /image-status answered {cst} {c}")
    orphans = pg.sql(url, "SELECT count(*) FROM easel_images i LEFT JOIN easel_jobs j ON "
                          "j.id = i.job_id WHERE j.status IS DISTINCT FROM 'completed' OR "
                          "j.image IS DISTINCT FROM i.name")[0][0]
    if orphans != "0":
        problems.append(f"{orphans} image rows without their completed job")
    missing = pg.sql(url, "SELECT count(*) FROM easel_jobs j WHERE status='completed' AND NOT "
                          "EXISTS (SELECT 1 FROM easel_images i WHERE i.job_id = j.id)")[0][0]
    if missing != "0":
        problems.append(f"{missing} completed jobs without an image row")
    return problems, statuses, reasons


def start_node(s, problems):
    try:
        s.start(timeout=90)
    except RuntimeError as e:
        problems.append(f"node on {s.port} did not start: {str(e)[-300:]}")


def run(args):
    rng = random.Random(args.seed)
    exe = common.easel_binary(args.build)
    why = pgmod.unavailable(exe)
    if why:
        return {"skipped": why, "n_problems": 0, "problems": []}
    work = tempfile.mkdtemp(prefix="easel-multinode-")
    model = common.make_model(exe, os.path.join(work, "tiny"))
    pg = pgmod.PgServer().start()
    url = pg.createdb("chaos")
    flags = ["--store", url, "--workers", "2", "--lease", args.lease, "--queue-max", "100000",
             "--retention", "0", "--no-calibrate", "--shutdown-grace", "1s"]
    nodes = [common.Server(exe, model, os.path.join(work, f"node{i}"),
                           flags + (["--node-id", "stable-0"] if i == 0 else []))
             for i in range(args.nodes)]
    problems, tr, stop, owners = [], common.Tracker(), threading.Event(), {}
    for s in nodes:
        s.start()
    threads = [threading.Thread(target=submitter, args=(nodes, tr, stop, args.seed * 10 + i))
               for i in range(2)]
    threads.append(threading.Thread(target=canceler, args=(nodes, tr, stop, args.seed * 10 + 9)))
    samp_stop = threading.Event()
    samp = threading.Thread(target=sampler, args=(pg, url, samp_stop, owners))
    for t in threads + [samp]:
        t.start()
    kills, hows, t0, db_crash_at, db_down_s = 0, {}, time.time(), args.duration * 0.4, None
    try:
        while kills < args.kills and time.time() - t0 < args.duration:
            time.sleep(rng.uniform(0.3, 2.0))
            if db_down_s is None and time.time() - t0 >= db_crash_at:
                pg.stop("immediate")  # the database crashes ...
                d0 = time.time()
                time.sleep(rng.uniform(1.0, 2.5))
                pg.start()  # ... and comes back (recovery from its WAL)
                db_down_s = round(time.time() - d0, 2)
                continue
            victim = rng.choice(nodes)
            if not victim.alive():
                continue
            if rng.random() < 0.25:
                victim.proc.send_signal(signal.SIGTERM)
                time.sleep(rng.uniform(0.0, 0.3))
                how = "term+kill"
            else:
                how = "kill"
            victim.kill9()
            hows[how] = hows.get(how, 0) + 1
            kills += 1
            time.sleep(rng.uniform(0.0, 1.0))
            start_node(victim, problems)
    finally:
        stop.set()
        for t in threads:
            t.join()
    for s in nodes:
        if not s.alive():
            start_node(s, problems)
    fp, statuses, reasons = final_check(pg, url, nodes, tr, args.wait)
    problems += fp
    samp_stop.set()
    samp.join()
    expiries = int(pg.sql(url, "SELECT v FROM easel_meta WHERE k='lease_expiries'")[0][0])
    rescues = int(pg.sql(url, "SELECT v FROM easel_meta WHERE k='rescues'")[0][0])
    repeated = int(pg.sql(url, "SELECT coalesce(sum(attempts - 1), 0) FROM easel_jobs "
                               "WHERE attempts > 1")[0][0])
    recovered, requeued_by_stops = recovered_count(nodes)
    changed = sum(len(o) - 1 for o in owners.values() if len(o) > 1)
    if changed > expiries + recovered + requeued_by_stops:
        problems.append(f"{changed} owner changes but only {expiries} lease expiries, "
                        f"{recovered} recoveries and {requeued_by_stops} graceful requeues: "
                        f"a job ran twice without a lease expiring")
    if repeated > expiries + recovered:
        problems.append(f"{repeated} repeated attempts but only {expiries} lease expiries and "
                        f"{recovered} recoveries")
    for s in nodes:
        st, h = common.get_json(s.port, "/healthz")
        if st != 200 or not h or h.get("workers_live") != 2:
            problems.append(f"healthz of {s.port} after the run: {st} {h}")
    for s in nodes:
        s.stop_checked(problems, f"the final graceful stop of {s.port}")
    pg.cleanup()
    if not problems:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "nodes": args.nodes, "kills": kills, "kinds": hows, "db_down_s": db_down_s,
        "seconds": round(time.time() - t0, 1), "requests_sent": tr.sent,
        "accepted": len(tr.ids), "refused": tr.refused,
        "server_errors": sum(n for k, n in tr.refused.items() if k >= 500 and k != 503),
        "io_errors": tr.io_errors, "cancel_requests_ok": tr.cancels, "final_status": statuses,
        "failure_reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])[:5]),
        "lease_expiries": expiries, "rescues": rescues, "startup_recoveries": recovered,
        "graceful_requeues": requeued_by_stops,
        "repeated_attempts": repeated, "owner_changes_seen": changed,
        "problems": problems[:50], "n_problems": len(problems), "work_dir": work,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--kills", type=int, default=60)
    ap.add_argument("--duration", type=float, default=300, help="stop the chaos after this many s")
    ap.add_argument("--lease", default="3s")
    ap.add_argument("--wait", type=float, default=180, help="s for jobs to finish at the end")
    common.add_run_args(ap)
    args = ap.parse_args()
    s = run(args)
    if "skipped" in s:
        print(f"multinode: skipped: {s['skipped']}")
        return 0
    ok = s["n_problems"] == 0 and s["accepted"] > 0 and s["server_errors"] == 0
    return common.report("multinode", s, args.json, ok,
                         f"{s['kills']} kills, database down {s['db_down_s']} s, "
                         f"{s['accepted']} jobs, {s['repeated_attempts']} repeated after "
                         f"{s['lease_expiries']} lease expiries, {s['n_problems']} problems")


if __name__ == "__main__":
    sys.exit(main())
