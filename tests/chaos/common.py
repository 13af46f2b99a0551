"""Shared pieces of the chaos tools (kill9, badinput, load, faults): finding
the binary, a tiny model, one `easel serve` process on a loopback port, a
small blocking HTTP client, PNG and data-dir checks. Standard library only.
"""
import http.client
import json
import os
import signal
import socket
import sqlite3
import struct
import subprocess
import tempfile
import threading
import time
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TERMINAL = ("completed", "failed", "canceled")


def easel_binary(build=None):
    build = build or os.environ.get("EASEL_BUILD", "build")
    path = build if os.path.isabs(build) else os.path.join(ROOT, build)
    return os.path.join(path, "easel")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_model(exe, out):
    """A tiny random-weight model at out (made once)."""
    if os.path.isdir(out):
        return out
    r = subprocess.run([exe, "make-model", "--arch", "tiny", "--out", out],
                       capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"easel make-model failed: {r.stderr[-500:]}")
    return out


def tiny_server(build, prefix, flags):
    """An `easel serve` (not started) on a tiny model, in a fresh temp dir named prefix*."""
    exe = easel_binary(build)
    work = tempfile.mkdtemp(prefix=prefix)
    model = make_model(exe, os.path.join(work, "tiny"))
    return Server(exe, model, os.path.join(work, "data"), flags)


def add_run_args(ap):
    """The flags every chaos tool takes: --seed, --build, --json."""
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--build", default=None, help="build dir holding easel ($EASEL_BUILD)")
    ap.add_argument("--json", default=None, help="also write the summary here")


def report(name, summary, json_path, ok, line):
    """Prints the summary (and writes it to json_path), then one verdict line;
    returns the exit code."""
    print(json.dumps(summary, indent=1))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(summary, f, indent=1)
    print(f"{name}: {line}: {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


class Server:
    """One `easel serve`; the port and data dir survive restarts."""

    def __init__(self, exe, model, data_dir, args=(), env=None, port=None):
        self.exe, self.model, self.data_dir = exe, model, str(data_dir)
        self.args, self.env = list(args), dict(env or {})
        self.port = port or free_port()
        self.proc = None
        self.log_path = os.path.join(self.data_dir, "serve.log")

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def command(self):
        return [self.exe, "serve", "--model", self.model, "--host", "127.0.0.1",
                "--port", str(self.port), "--data-dir", self.data_dir,
                "--default-size", "64x64", "--default-steps", "4", *self.args]

    def spawn(self):
        os.makedirs(self.data_dir, exist_ok=True)
        env = dict(os.environ)
        env.update(self.env)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         env=env)
        return self.proc

    def start(self, timeout=60):
        self.spawn()
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"easel serve exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                if request(self.port, "GET", "/healthz", timeout=1)[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"easel serve not ready after {timeout}s:\n{self.tail()}")

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill9(self):
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop_checked(self, problems, what="graceful stop"):
        """stop(), adding a problem if the exit status is not 0."""
        code = self.stop()
        if code != 0:
            problems.append(f"{what} exited {code}")

    def stop(self, timeout=30):
        """SIGTERM, then SIGKILL after timeout; returns the exit status."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else None

    def rss_kb(self):
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return 0

    def tail(self, n=3000):
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-n:].decode(errors="replace")
        except OSError:
            return ""


def request(port, method, path, body=None, headers=None, timeout=10, conn=None):
    """(status, headers dict lower-cased, body bytes). Raises OSError on I/O
    failure. With conn (an http.client.HTTPConnection) the connection is reused."""
    own = conn is None
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        h = dict(headers or {})
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    except http.client.HTTPException as e:
        raise OSError(f"http: {e!r}") from e
    finally:
        if own:
            c.close()


def utf8_problem(body):
    """None if body (bytes) is valid UTF-8 (and, when it looks like JSON, parses); else why."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"not UTF-8: {e}"
    if text[:1] in ("{", "["):
        try:
            json.loads(text)
        except ValueError as e:
            return f"not JSON: {e}"
    return None


def get_json(port, path, **kw):
    st, _, data = request(port, "GET", path, **kw)
    return st, (json.loads(data) if data[:1] in (b"{", b"[") else None)


def png_problem(data):
    """None if data is a complete PNG (signature, chunk CRCs, IEND, IDAT
    inflates to height*(1+3*width) bytes for 8-bit RGB); else what is wrong."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return "no PNG signature"
    off, idat, ihdr, end = 8, b"", None, False
    while off + 12 <= len(data):
        n, kind = struct.unpack(">I4s", data[off:off + 8])
        chunk = data[off + 8:off + 8 + n]
        if len(chunk) != n or off + 12 + n > len(data):
            return f"chunk {kind!r} truncated"
        (crc,) = struct.unpack(">I", data[off + 8 + n:off + 12 + n])
        if zlib.crc32(kind + chunk) != crc:
            return f"chunk {kind!r} bad CRC"
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
        elif kind == b"IEND":
            end = True
            break
        off += 12 + n
    if not ihdr or not end:
        return "no IHDR or IEND"
    w, h, depth, ctype = ihdr[:4]
    try:
        raw = zlib.decompress(idat)
    except zlib.error as e:
        return f"IDAT: {e}"
    chans = {0: 1, 2: 3, 4: 2, 6: 4}.get(ctype, 1)
    if depth == 8 and len(raw) != h * (1 + chans * w):
        return f"IDAT holds {len(raw)} bytes, not {h * (1 + chans * w)}"
    return None


def data_dir_problems(data_dir, images="images", db="easel.db"):
    """Checks a stopped server's data dir: PRAGMA integrity_check, every
    completed row's image present and a whole PNG, no temp files, no
    truncated PNG, no image that no row refers to. Returns a list of
    problems (empty = fine) and row counts."""
    problems, counts = [], {}
    img_dir = os.path.join(data_dir, images)
    names = os.listdir(img_dir) if os.path.isdir(img_dir) else []
    temps = [n for n in names if ".tmp" in n or n.startswith(".")]
    if temps:
        problems.append(f"{len(temps)} temp files left in {img_dir}: {temps[:5]}")
    for n in names:
        if n.endswith(".png") and not n.startswith("."):
            with open(os.path.join(img_dir, n), "rb") as f:
                p = png_problem(f.read())
            if p:
                problems.append(f"{n}: {p}")
    con = sqlite3.connect(f"file:{os.path.join(data_dir, db)}?mode=ro", uri=True)
    try:
        ic = con.execute("PRAGMA integrity_check").fetchall()
        if ic != [("ok",)]:
            problems.append(f"integrity_check: {ic[:5]}")
        cols = [r[1] for r in con.execute("PRAGMA table_info(jobs)")]
        img_col = "image" if "image" in cols else None
        for st, n in con.execute("SELECT status, count(*) FROM jobs GROUP BY status"):
            counts[st] = n
        if img_col:
            referenced = set()
            for jid, st, img in con.execute(f"SELECT id, status, {img_col} FROM jobs"):
                done = st in ("completed", 2)
                if img:
                    referenced.add(img)
                if done and (not img or not os.path.exists(os.path.join(img_dir, img))):
                    problems.append(f"completed job {jid} has no image file ({img!r})")
            orphans = [n for n in names if n.endswith(".png") and not n.startswith(".")
                       and n not in referenced]
            if orphans:  # a public file no job refers to, that retention would never delete
                problems.append(f"{len(orphans)} orphaned images: {orphans[:5]}")
    finally:
        con.close()
    return problems, counts


def percentile(xs, q):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


class Tracker:
    """The job ids a chaos run's clients got a 202 for, and what they saw."""

    def __init__(self):
        self.mu = threading.Lock()
        self.ids = {}  # id -> "native" | "compat"
        self.sent = self.accepted = self.io_errors = self.cancels = 0
        self.refused = {}  # status -> count

    def add(self, jid, kind):
        with self.mu:
            self.ids[jid] = kind
            self.accepted += 1

    def pick(self, rng):
        with self.mu:
            return rng.choice(list(self.ids)) if self.ids else None


def submit_one(port, tr, body, compat, timeout):
    """POSTs one job (the seed's /generate-concept when compat, else /v1/jobs)
    and records in tr what came back. Returns False after a network error."""
    try:
        with tr.mu:
            tr.sent += 1
        st, _, data = request(port, "POST", "/generate-concept" if compat else "/v1/jobs",
                              body=body, timeout=timeout)
        if st == 202 or (compat and st == 200):
            d = json.loads(data)
            jid = d.get("job_id") if compat else d.get("id")
            if jid:
                tr.add(jid, "compat" if compat else "native")
        else:
            with tr.mu:
                tr.refused[st] = tr.refused.get(st, 0) + 1
        return True
    except (OSError, ValueError):
        with tr.mu:
            tr.io_errors += 1
        return False


def cancel_one(port, tr, jid, timeout):
    try:
        st, _, _ = request(port, "POST", f"/v1/jobs/{jid}/cancel", timeout=timeout)
        if st in (200, 202):
            with tr.mu:
                tr.cancels += 1
    except OSError:
        pass
