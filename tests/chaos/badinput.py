#!/usr/bin/env python3
"""Bad-input battery: sends >= 10,000 hostile requests to a running `easel
serve` (tiny model): malformed and truncated JSON, deep nesting, huge strings
and numbers, wrong types, NaN/Infinity, unicode edge cases and invalid UTF-8,
out-of-range sizes/steps/guidance, unknown fields, ids that are not UUIDs,
path traversal in ids and static paths (../, %2e%2e, NUL), huge headers,
oversized and lying bodies, wrong methods and content types, invalid HTTP
and slow-loris clients. Passes when no answer is a 5xx, the server stays up,
its RSS stays bounded, and valid jobs submitted all along complete. Jobs that
hostile requests happen to create are canceled at once.

  badinput.py [--count 10000] [--threads 8] [--seed 1] [--build build] [--json out.json]
"""
import argparse
import json
import os
import random
import re
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

UUID = "0b8e6f3a-3f0e-4c57-9a39-4a0e5d1c2b7f"
VALID = {"prompt": "a cozy living room", "width": 64, "height": 64, "steps": 2,
         "guidance_scale": 7.5, "sampler": "euler_a", "seed": 1}
COMPAT = {"room_type": "living_room", "style": "scandinavian", "colors": ["white", "oak"]}

# ---- what to send: (kind, raw request bytes) ----


def http_req(method, path, body=b"", ctype="application/json", extra=(), length=None):
    if isinstance(body, str):
        body = body.encode("utf-8", "surrogatepass")
    if isinstance(path, str):
        path = path.encode("utf-8", "surrogatepass")
    lines = [method.encode() + b" " + path + b" HTTP/1.1", b"Host: 127.0.0.1"]
    if ctype is not None:
        lines.append(b"Content-Type: " + ctype.encode())
    if body or length is not None:
        lines.append(b"Content-Length: " + str(len(body) if length is None else length).encode())
    lines += [e if isinstance(e, bytes) else e.encode() for e in extra]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def json_bodies(rng):
    """Hostile JSON bodies (str or bytes) for POST /v1/jobs and /generate-concept."""
    v = json.dumps(VALID)
    out = [v[:i] for i in range(len(v))]  # every truncation
    for n in (2, 64, 512, 999, 1000, 1001, 5000, 30000):
        out += ["[" * n + "]" * n, "[" * n, '{"a":' * n + "1" + "}" * n,
                '{"prompt":' + "[" * n + '"x"' + "]" * n + "}"]
    for n in (4095, 4096, 4097, 20000, 60000):
        out += [json.dumps(dict(VALID, prompt="x" * n)),
                json.dumps(dict(VALID, negative_prompt="y" * n))]
    nums = ["0", "-0", "-1", "1", "7", "63", "64", "65", "2048", "2049", "2056", "4096",
            "64.5", "1e2", "1e999", "-1e999", "1e308", "-1e308", "5e-324", "99999999999999999999999",
            "9007199254740993", "-9007199254740993", "NaN", "Infinity", "-Infinity", "nan", "0x40",
            "01", "+64", ".5", "1.", "\"64\"", "true", "false", "null", "[]", "{}", "[64]"]
    for field in ("width", "height", "steps", "guidance_scale", "seed"):
        for n in nums:
            out.append(v[:-1] + f', "{field}": {n}}}')
            out.append(json.dumps(dict(VALID, **{field: 0}))[:-1].replace(f'"{field}": 0', f'"{field}": {n}') + "}")
    types = ["1", "1.5", "true", "null", "[]", "{}", '["a"]', '{"a":"b"}', '""', '" "']
    for field in ("prompt", "negative_prompt", "sampler"):
        for t in types:
            out.append(json.dumps({k: x for k, x in VALID.items() if k != field})[:-1] +
                       f', "{field}": {t}}}')
    for s in ("", "EULER_A", "euler a", "ddim\u0000", "x" * 10000, "../../etc/passwd", "%s%n"):
        out.append(json.dumps(dict(VALID, sampler=s)))
    uni = ["\\ud800", "\\udfff", "\\ud800\\ud800", "\\udc00\\ud800", "\\u0000", "a\\u0000b",
           "\\uffff", "\\ufffe", "\\u202e", "\\u200b", "\\ud83d\\ude00", "\\u00e9", "\\uZZZZ",
           "\\u12", "\\", "\\x41", "\\'"]
    for u in uni:
        out.append('{"prompt": "' + u + '", "width": 64, "height": 64, "steps": 2}')
    raw_utf8 = [b"\xff", b"\xfe\xff", b"\xc0\xaf", b"\xe0\x80\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
                b"\xc3", b"\xe2\x82", b"\x80", b"\xf0\x9f\x98", b"\x00"]
    for b in raw_utf8:
        out.append(b'{"prompt": "a' + b + b'b", "width": 64, "height": 64, "steps": 2}')
        out.append(b"\xef\xbb\xbf" + json.dumps(VALID).encode() + b)
    out += ["", " ", "null", "true", "1", '"str"', "[]", "[{}]", "{}", "{", "}", '{"prompt"}',
            '{"prompt":}', '{"prompt":"a",}', "{'prompt':'a'}", '{"prompt":"a"}{"prompt":"b"}',
            '{"prompt":"a"} trailing', '{"prompt":"a" "width":64}', "\u0000", "//comment\n{}"]
    out.append(json.dumps(dict(VALID, unknown=1, extra={"a": [1, 2]})))
    out.append(json.dumps({f"k{i}": i for i in range(5000)}))
    out.append(json.dumps(dict(VALID, **{"__proto__": {}, "constructor": 1})))
    out.append('{"prompt":"a","prompt":"b","width":64,"width":128,"steps":1,"steps":999}')
    while len(out) < 9000:  # byte-level mutations of valid bodies
        b = bytearray(json.dumps(rng.choice([VALID, COMPAT])).encode())
        for _ in range(rng.randint(1, 6)):
            op, i = rng.random(), rng.randrange(len(b))
            if op < 0.4:
                b[i] = rng.randrange(256)
            elif op < 0.7:
                del b[i]
            else:
                b[i:i] = bytes([rng.choice(b'{}[]":,\\0123456789-eE.tfn \x00\xff')])
        out.append(bytes(b))
    return out


def path_cases():
    bad_ids = ["x", "..", "../../etc/passwd", "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "..%2f..%2feasel.db",
               "%00", "a%00b", UUID + "%00", UUID.upper(), UUID[:-1], UUID + "0", UUID.replace("-", ""),
               "g" * 36, "-" * 36, "0" * 5000, "%ff%fe", "%c0%ae%c0%ae", "\u00e9" * 20, "%", "%%",
               "%2", UUID + "/..", "./" + UUID, "images", "*", "$(id)", "'; DROP TABLE jobs;--"]
    paths = []
    for i in bad_ids:
        paths += [("GET", f"/v1/jobs/{i}"), ("GET", f"/v1/jobs/{i}/image"),
                  ("POST", f"/v1/jobs/{i}/cancel"), ("DELETE", f"/v1/jobs/{i}"),
                  ("GET", f"/image-status/{i}"), ("GET", f"/uploads/conceptual_images/{i}"),
                  ("GET", f"/v1/jobs/{i}/events")]
    statics = ["/../../etc/passwd", "/..%2f..%2fetc%2fpasswd", "/%2e%2e/%2e%2e/etc/passwd",
               "/index.html/..", "/index.html%00.png", "/static/../../easel.db", "//etc/passwd",
               "/./index.html", "/uploads/conceptual_images/../../easel.db",
               "/uploads/conceptual_images/..%2f..%2feasel.db",
               "/uploads/conceptual_images/%2e%2e%2f%2e%2e%2feasel.db",
               "/uploads/conceptual_images/.easel.db.tmp", "/uploads/conceptual_images/",
               "/uploads/../easel.db", "/uploads/conceptual_images/x.png%00.txt",
               "/uploads/conceptual_images/" + "a" * 300 + ".png", "/images/../easel.db",
               "/v1/jobs/" + UUID + "/image/../../../easel.db", "/healthz/../metrics",
               "/metrics%00", "/openapi.yaml/..", "/v1/jobs?limit=-1", "/v1/jobs?limit=99999999999",
               "/v1/jobs?status=%00", "/v1/jobs?cursor=../../", "/" + "a" * 8000, "/\u00e9", "/%"]
    paths += [("GET", s) for s in statics]
    for m in ("PUT", "PATCH", "TRACE", "CONNECT", "FOO", "get", "G\u00c9T", "X" * 300, "DELETE", "POST"):
        for p in ("/", "/v1/jobs", f"/v1/jobs/{UUID}", "/healthz", "/generate-concept", "/metrics"):
            paths.append((m, p))
    return paths


def raw_cases(rng):
    """Malformed HTTP, sent on a fresh connection each."""
    body = json.dumps(VALID).encode()
    r = [b"GARBAGE\r\n\r\n", b"\r\n\r\n", b"GET\r\n\r\n", b"GET /\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n",
         b"GET / HTTP/1.1\r\n\r\n", b"GET / HTTP/1.1\nHost: x\n\n", b"GET /%00 HTTP/1.1\r\nHost: x\r\n\r\n",
         b"GET / HTTP/1.1\r\nHost: x\r\nNoColonHeader\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
         b"GET /\x00/ HTTP/1.1\r\nHost: x\r\n\r\n", b"GET / HTTP/1.1\r\nHost: \x00\xff\r\n\r\n",
         b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64),  # a TLS ClientHello
         b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nX-Request-Id: a\r\n\tb\r\n\r\n",
         b"GET /" + b"a" * 100000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"]
    for n in (8 << 10, 64 << 10, 200 << 10):  # huge headers
        r.append(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * n + b"\r\n\r\n")
    r.append(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(3000)) + b"\r\n")
    post = b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    r += [post + b"Content-Length: 99999999999\r\n\r\n" + body,
          post + b"Content-Length: -1\r\n\r\n" + body,
          post + b"Content-Length: abc\r\n\r\n" + body,
          post + b"Content-Length: 10\r\nContent-Length: 20\r\n\r\n" + body,
          post + b"Content-Length: 18446744073709551616\r\n\r\n" + body,
          post + b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\n" + body,
          post + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n" + body,
          post + b"Transfer-Encoding: chunked\r\n\r\n" + b"100000\r\n" + b"a" * 70000,
          post + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
          post + b"Content-Length: %d\r\n\r\n" % (1 << 20) + b"{" * (1 << 20),  # oversized
          post + b"Content-Length: 100\r\n\r\n{\"prompt\"",  # body shorter than promised
          post + b"Authorization: Bearer " + b"\xff" * 100 + b"\r\nContent-Length: 2\r\n\r\n{}",
          b"POST /generate-concept HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
          b"Content-Length: 40\r\n\r\nroom_type=%ff%00&style=%%%%&colors[]=%2", ]
    for _ in range(200):  # random bytes
        r.append(bytes(rng.randrange(256) for _ in range(rng.randint(1, 300))))
    return r


def build_cases(rng, count):
    cases = []
    ctypes = ["application/json", "text/plain", "application/x-www-form-urlencoded",
              "multipart/form-data; boundary=x", "application/json; charset=utf-16", None,
              "application/json\x00", "*/*"]
    bodies = json_bodies(rng)
    for b in bodies:
        ep = rng.choice(["/v1/jobs", "/v1/jobs", "/generate-concept"])
        ct = "application/json" if rng.random() < 0.85 else rng.choice(ctypes)
        cases.append(("json", http_req("POST", ep, b, ct)))
    for m, p in path_cases():
        cases.append(("path", http_req(m, p, b"", None)))
    for ct in ctypes:
        for ep in ("/v1/jobs", "/generate-concept"):
            cases.append(("ctype", http_req("POST", ep, json.dumps(VALID), ct)))
    for tok in ("Bearer", "Bearer ", "Basic YTpi", "Bearer " + "a" * 5000, "\u00e9"):
        cases.append(("auth", http_req("GET", "/v1/jobs", b"", None, [("Authorization: " + tok).encode("utf-8")])))
    raws = raw_cases(rng)
    while len(cases) + len(raws) < count:  # pad with more mutations
        cases.append(("json", http_req("POST", "/v1/jobs", rng.choice(bodies))))
    rng.shuffle(cases)
    return cases, [("raw", r) for r in raws]


# ---- sending ----

def read_response(sock, deadline):
    """Status and body of one response (Content-Length framed); None if the
    peer closed or the deadline passed before a status line."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        sock.settimeout(max(0.01, deadline - time.time()))
        try:
            chunk = sock.recv(65536)
        except (socket.timeout, OSError):
            return None, None, False
        if not chunk:
            return None, None, False
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        return -1, None, False
    hdr = {}
    for ln in lines[1:]:
        k, _, v = ln.partition(b":")
        hdr[k.strip().lower()] = v.strip()
    n = int(hdr.get(b"content-length", b"0") or 0)
    while len(rest) < n and time.time() < deadline:
        sock.settimeout(max(0.01, deadline - time.time()))
        try:
            chunk = sock.recv(65536)
        except (socket.timeout, OSError):
            break
        if not chunk:
            break
        rest += chunk
    keep = hdr.get(b"connection", b"").lower() != b"close" and len(rest) >= n
    return status, rest[:n], keep


def version_refusal(req, status):
    """libmicrohttpd answers 505 to an HTTP version other than 1.0/1.1 (HTTP/2's
    preface, "HTTP/9.9"): the protocol's own answer, before any of our code."""
    line = req.split(b"\n", 1)[0]
    return status == 505 and not re.match(rb"^\S+ \S+ HTTP/1\.[01]\r?$", line)


class Results:
    def __init__(self):
        self.mu = threading.Lock()
        self.by_status, self.bad, self.sent, self.created = {}, [], 0, []
        self.bad_utf8 = []

    def record(self, kind, req, status, body):
        with self.mu:
            self.sent += 1
            key = str(status) if status is not None else "closed"
            self.by_status[key] = self.by_status.get(key, 0) + 1
            if status is not None and (status >= 500 or status == -1) and not version_refusal(req, status):
                self.bad.append((kind, status, req[:200], (body or b"")[:200]))
            bad_text = common.utf8_problem(body) if body and status is not None else None
            if bad_text and not body.startswith(b"\x89PNG"):  # every reply is UTF-8 JSON
                self.bad_utf8.append((kind, status, req[:200], bad_text))
            if status in (200, 202) and body and kind in ("json", "ctype"):
                try:
                    d = json.loads(body)
                    if d.get("id") or d.get("job_id"):
                        self.created.append(d.get("id") or d.get("job_id"))
                except (ValueError, AttributeError):
                    pass


def send_all(port, cases, res, timeout, keepalive):
    sock = None
    for kind, req in cases:
        for attempt in range(2):
            if sock is None:
                sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
            try:
                sock.sendall(req)
            except OSError:  # the server may close early (e.g. on a huge header)
                pass
            status, body, keep = read_response(sock, time.time() + timeout)
            if status is None and keepalive and attempt == 0:
                sock.close()
                sock = None
                continue  # a stale keep-alive connection: send once more on a fresh one
            break
        res.record(kind, req, status, body)
        if kind in ("json", "ctype") and status in (200, 202):  # /generate-concept answers 200
            cancel_created(port, body)
        if not (keepalive and keep) and sock is not None:
            sock.close()
            sock = None
    if sock:
        sock.close()


def cancel_created(port, body):
    try:
        d = json.loads(body)
        jid = d.get("id") or d.get("job_id")
        if jid:
            common.request(port, "POST", f"/v1/jobs/{jid}/cancel", timeout=5)
    except (ValueError, OSError, AttributeError):
        pass


def slow_loris(port, n, seconds, stats):
    """n connections that send a header byte every 0.5 s."""
    socks = []
    for _ in range(n):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=2)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            socks.append(s)
        except OSError:
            stats["refused"] += 1
    t0 = time.time()
    while time.time() - t0 < seconds and socks:
        for s in list(socks):
            try:
                s.sendall(b"X")
            except OSError:
                stats["dropped_by_server"] += 1
                socks.remove(s)
        time.sleep(0.5)
    stats["still_open"] = len(socks)
    for s in socks:
        s.close()


def prober(port, stop, jobs, errors):
    """Submits a valid job every 0.5 s (retrying 429s) while the battery runs."""
    while not stop.is_set():
        try:
            st, _, body = common.request(port, "POST", "/v1/jobs", body=dict(VALID, steps=1), timeout=10)
            if st == 202:
                jobs.append(json.loads(body)["id"])
            elif st != 429:
                errors.append(f"valid job answered {st}: {body[:200]!r}")
        except OSError as e:
            errors.append(f"valid job: {e}")
        stop.wait(0.5)


def run(args):
    rng = random.Random(args.seed)
    srv = common.tiny_server(args.build, "easel-badinput-",
                             ["--workers", "2", "--conn-timeout", "3s", "--no-calibrate"])
    srv.start()
    cases, raws = build_cases(rng, args.count)
    res, stop, probe_jobs, probe_err = Results(), threading.Event(), [], []
    rss = [srv.rss_kb()]
    probe = threading.Thread(target=prober, args=(srv.port, stop, probe_jobs, probe_err))
    probe.start()
    loris = {"refused": 0, "dropped_by_server": 0}
    lt = threading.Thread(target=slow_loris, args=(srv.port, args.loris, 8, loris))
    lt.start()
    t0 = time.time()
    # keep-alive senders for well-formed HTTP; many raw senders, as a malformed
    # request may get no answer until the server's connection timeout
    ths = [threading.Thread(target=send_all, args=(srv.port, cases[i::args.threads], res, 5.0, True))
           for i in range(args.threads)]
    ths += [threading.Thread(target=send_all, args=(srv.port, raws[i::24], res, 1.5, False))
            for i in range(24)]
    for t in ths:
        t.start()
    while any(t.is_alive() for t in ths):
        time.sleep(0.25)
        rss.append(srv.rss_kb())
    for t in ths:
        t.join()
    elapsed = time.time() - t0
    lt.join()
    stop.set()
    probe.join()
    problems = [f"{k} -> {s}: {r!r} => {b!r}" for k, s, r, b in res.bad[:20]]
    if len(res.bad) > 20:
        problems.append(f"... {len(res.bad)} bad answers in all")
    problems += [f"{k} -> {s}: {r!r}: reply {why}" for k, s, r, why in res.bad_utf8[:20]]
    if not srv.alive():
        problems.append(f"the server died:\n{srv.tail()}")
    else:
        try:
            if common.request(srv.port, "GET", "/healthz", timeout=5)[0] != 200:
                problems.append("healthz not 200 after the battery")
        except OSError as e:
            problems.append(f"healthz after the battery: {e}")
        rss.append(srv.rss_kb())
    problems += probe_err[:10]
    done = {}
    for jid in probe_jobs:
        j = None
        for _ in range(600):
            st, j = common.get_json(srv.port, f"/v1/jobs/{jid}")
            if j and j.get("status") in common.TERMINAL:
                break
            time.sleep(0.1)
        s = j.get("status") if j else "missing"
        done[s] = done.get(s, 0) + 1
        if s != "completed":
            problems.append(f"valid job {jid} ended {s}: {j}")
    if not probe_jobs:
        problems.append("no valid job was accepted during the battery")
    warm = rss[min(len(rss) - 1, 4)]
    growth_mb = (max(rss) - warm) / 1024
    if growth_mb > args.rss_mb:
        problems.append(f"RSS grew {growth_mb:.0f} MiB (> {args.rss_mb})")
    # slow-loris connections still open within --conn-timeout are not an error by themselves
    srv.stop_checked(problems)
    return {
        "requests": res.sent, "seconds": round(elapsed, 1), "req_per_s": round(res.sent / elapsed),
        "by_status": dict(sorted(res.by_status.items())), "server_errors": len(res.bad),
        "replies_not_utf8_json": len(res.bad_utf8), "not_utf8_examples": res.bad_utf8[:5],
        "hostile_jobs_created_and_canceled": len(res.created),
        "valid_jobs": len(probe_jobs), "valid_jobs_final": done, "slow_loris": loris,
        "rss_kb": {"start": rss[0], "after_warmup": warm, "max": max(rss), "end": rss[-1]},
        "problems": problems, "n_problems": len(problems),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--loris", type=int, default=50, help="slow-loris connections")
    ap.add_argument("--rss-mb", type=float, default=64, help="allowed RSS growth after warm-up")
    common.add_run_args(ap)
    args = ap.parse_args()
    s = run(args)
    ok = s["n_problems"] == 0 and s["requests"] >= args.count
    return common.report("badinput", s, args.json, ok, f"{s['requests']} requests, "
                         f"{s['server_errors']} 5xx, {s['n_problems']} problems")


if __name__ == "__main__":
    sys.exit(main())
