"""Issue 13's findings against a real `easel serve` (tiny model): each test
failed on 33120ee. Workers that died in a submit/cancel race, two servers on
one data dir, cross-site writes and DNS rebinding, unbounded job tables,
invalid UTF-8, lax JSON, server paths in errors, orphaned images, admission
limits, 413 before the body, SIGTERM during the model load."""
import json
import os
import signal
import socket
import subprocess
import threading
import time

import pytest
import requests

from conftest import ROOT, VERY_SLOW


def threads_of(pid):
    return len(os.listdir(f"/proc/{pid}/task"))


def raw(port, request_bytes, timeout=5):
    """Sends raw bytes, returns everything the server answers (until it closes or idles)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request_bytes)
        out = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
                if b"\r\n\r\n" in out and len(out) > 16:
                    head, _, body = out.partition(b"\r\n\r\n")
                    n = [int(l.split(b":")[1]) for l in head.split(b"\r\n")
                         if l.lower().startswith(b"content-length:")]
                    if n and len(body) >= n[0]:
                        break
        except socket.timeout:
            pass
        return out


# ---- 1. workers never exit; health counts them ----

def test_submit_cancel_race_keeps_workers(make_server):
    s = make_server(["--workers", "2", "--no-calibrate"])
    before = threads_of(s.proc.pid)
    errors = []

    def client():
        sess = requests.Session()
        for _ in range(300):
            r = sess.post(s.url + "/v1/jobs", json={"prompt": "race", "steps": 1}, timeout=10)
            if r.status_code != 202:
                errors.append(r.status_code)
                continue
            c = sess.post(s.url + f"/v1/jobs/{r.json()['id']}/cancel", timeout=10)
            if c.status_code not in (200, 409):
                errors.append(c.status_code)

    ts = [threading.Thread(target=client) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors[:10]
    h = s.get("/healthz").json()
    assert h["workers_live"] == 2 and h["status"] == "ok", h
    assert threads_of(s.proc.pid) == before, (before, threads_of(s.proc.pid))
    last = s.submit(steps=2)["id"]
    assert s.wait(last, timeout=30)["status"] == "completed"
    assert "easel_workers_live 2" in s.get("/metrics").text


# ---- 2. one server per data dir ----

def test_second_server_on_a_data_dir_refused(make_server, easel, tiny_model, tmp_path):
    data = tmp_path / "shared"
    s = make_server(data_dir=data)
    r = subprocess.run([easel, "serve", "--model", tiny_model, "--port", "0", "--data-dir",
                        str(data), "--no-calibrate"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr[-500:]
    assert f"data dir {data} is in use by pid {s.proc.pid}" in r.stderr, r.stderr[-500:]
    assert s.get("/healthz").status_code == 200
    s.stop()
    s2 = make_server(data_dir=data)  # the lock goes with the process
    assert s2.get("/healthz").status_code == 200


# ---- 3. Host and Origin ----

def test_dns_rebinding_host_refused(make_server):
    s = make_server()
    jid = s.submit(steps=1)["id"]
    r = requests.get(s.url + f"/v1/jobs/{jid}", headers={"Host": "rebind.example"}, timeout=10)
    assert r.status_code == 421 and r.json()["error"]["code"] == "host_not_allowed", r.text
    assert "rebind" not in r.text or "--allowed-host" in r.text
    for host in (f"127.0.0.1:{s.port}", f"localhost:{s.port}", "127.0.0.1"):
        assert requests.get(s.url + "/healthz", headers={"Host": host}, timeout=10).status_code == 200
    s2 = make_server(["--allowed-host", "render.example,other.example"])
    r = requests.get(s2.url + "/healthz", headers={"Host": "render.example:8080"}, timeout=10)
    assert r.status_code == 200, r.text


def test_cross_site_form_post_refused(make_server):
    s = make_server()
    form = "room_type=kitchen&style=modern"
    hdr = {"Content-Type": "application/x-www-form-urlencoded"}
    evil = requests.post(s.url + "/generate-concept", data=form,
                         headers={**hdr, "Origin": "https://evil.example"}, timeout=10)
    assert evil.status_code == 403 and evil.json()["error"]["code"] == "origin_not_allowed"
    assert evil.json()["success"] is False  # the seed's error shape on its route
    assert requests.post(s.url + "/v1/jobs", json={"prompt": "x"},
                         headers={"Origin": "null"}, timeout=10).status_code == 403
    same = requests.post(s.url + "/generate-concept", data=form,
                         headers={**hdr, "Origin": f"http://127.0.0.1:{s.port}"}, timeout=10)
    assert same.status_code == 200, same.text
    php = requests.post(s.url + "/generate-concept", data=form, headers=hdr, timeout=10)
    assert php.status_code == 200, php.text  # no Origin: not a browser
    assert requests.get(s.url + "/v1/jobs", headers={"Origin": "https://evil.example"},
                        timeout=10).status_code == 200  # reads are for CORS to guard
    c = make_server(["--cors-origin", "https://app.example"])
    ok = requests.post(c.url + "/v1/jobs", json={"prompt": "x", "steps": 1},
                       headers={"Origin": "https://app.example"}, timeout=10)
    assert ok.status_code == 202 and ok.headers["Access-Control-Allow-Origin"] == "https://app.example"


# ---- 4. the retained-jobs cap ----

def test_max_jobs_cap_evicts_oldest_finished(make_server):
    s = make_server(["--max-jobs", "4", "--workers", "1", "--no-calibrate"])
    slow = s.submit(**VERY_SLOW)["id"]
    s.wait_step(slow)
    ids = [s.submit(steps=1)["id"] for _ in range(3)]
    r = s.post("/v1/jobs", json={"prompt": "one too many"})
    assert r.status_code == 429 and "--max-jobs" in r.json()["error"]["message"], r.text
    assert r.headers.get("Retry-After")
    for i in ids[:2]:
        assert s.post(f"/v1/jobs/{i}/cancel").status_code == 200
    new = s.post("/v1/jobs", json={"prompt": "fits now"})
    assert new.status_code == 202, new.text
    assert s.get(f"/v1/jobs/{ids[0]}").status_code == 404  # the oldest finished one went
    assert s.get(f"/v1/jobs/{ids[1]}").json()["status"] == "canceled"
    h = s.get("/healthz").json()
    assert h["jobs_retained"] == 4 and h["max_jobs"] == 4, h
    assert "easel_jobs_evicted_total 1" in s.get("/metrics").text
    s.post(f"/v1/jobs/{slow}/cancel")


# ---- 5. UTF-8 everywhere ----

def test_invalid_utf8_refused_naming_the_field(make_server):
    s = make_server()
    body = b'{"prompt":"ok","negative_prompt":"bad \xff byte"}'
    r = s.post("/v1/jobs", data=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["field"] == "negative_prompt" and "UTF-8" in err["message"], err
    r = s.post("/generate-concept", data=b'{"room_analysis":{"description":"x\xc3"}}',
               headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["success"] is False, r.text
    r = s.post("/generate-concept", data="room_type=kitchen&description=%FF%FE",
               headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 400 and r.json()["error"]["field"] == "description", r.text
    r = s.post("/generate-concept", data="room_type=kit%00chen",
               headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 400, r.text
    # the job list stays decodable by strict clients
    listing = s.get("/v1/jobs?limit=100")
    listing.content.decode("utf-8")
    assert listing.status_code == 200


def test_long_multibyte_description_cut_on_a_boundary(make_server):
    s = make_server()
    desc = "Gemütliches Wohnzimmer mit Kachelofen – 明るい北欧風 " * 30  # > 600 bytes
    r = s.post("/generate-concept", json={"room_type": "living_room", "description": desc})
    assert r.status_code == 200, r.text
    r.content.decode("utf-8")  # raises on a split character
    body = r.json()
    assert body["prompt_shortened"] is True and body["warnings"], body
    st = s.get(f"/image-status/{body['job_id']}")
    st.content.decode("utf-8")
    short = s.post("/generate-concept", json={"room_type": "kitchen", "description": "ok"}).json()
    assert short["prompt_shortened"] is False and "warnings" not in short


# ---- 8. strict JSON ----

def test_strict_json(make_server):
    s = make_server()
    js = {"Content-Type": "application/json"}
    r = s.post("/v1/jobs", data='{"prompt":"a"} trailing', headers=js)
    assert r.status_code == 400 and "trailing" in r.json()["error"]["message"], r.text
    r = s.post("/v1/jobs", data='{"prompt":"a","prompt":"b"}', headers=js)
    assert r.status_code == 400 and "duplicate" in r.json()["error"]["message"], r.text
    assert r.json()["error"]["field"] == "prompt"
    r = s.post("/generate-concept", json={"room_type": 5})
    err = r.json()["error"]
    assert r.status_code == 400 and err["field"] == "room_type" and "must be text" in err["message"]
    r = s.post("/generate-concept", data='{"room_type":"kitchen"}',
               headers={"Content-Type": "application/jsonfoo"})
    assert r.status_code == 415, r.text
    r = s.post("/v1/jobs", data='{"prompt":"a"}', headers={"Content-Type": "application/jsonx"})
    assert r.status_code == 415, r.text
    ok = s.post("/v1/jobs", data='{"prompt":"a","steps":1}  \n',
                headers={"Content-Type": "application/json; charset=utf-8"})
    assert ok.status_code == 202, ok.text


# ---- 11. orphaned images ----

def test_orphaned_image_removed_at_start(make_server, tmp_path):
    data = tmp_path / "orphans"
    s = make_server(data_dir=data)
    done = s.wait(s.submit(steps=1)["id"])
    s.stop()
    images = data / "images"
    orphan = images / "conceptual_kitchen_20261201_101010_0a1b2c3d.png"  # renamed, never committed
    orphan.write_bytes(b"\x89PNG")
    mine = images / "holiday.png"  # not a name easel writes: left alone
    mine.write_bytes(b"x")
    s = make_server(data_dir=data)
    assert not orphan.exists() and mine.exists()
    assert (images / f"{done['id']}.png").exists()
    assert "easel_orphan_images_removed_total 1" in s.get("/metrics").text


# ---- 12. admission limits by cost ----

def test_admission_limits(make_server):
    s = make_server(["--max-pixels", "65536", "--max-steps", "10"])
    r = s.post("/v1/jobs", json={"prompt": "big", "width": 512, "height": 256})
    err = r.json()["error"]
    assert r.status_code == 400 and err["field"] == "width" and "--max-pixels" in err["message"]
    r = s.post("/v1/jobs", json={"prompt": "long", "steps": 11})
    err = r.json()["error"]
    assert r.status_code == 400 and err["field"] == "steps" and "--max-steps" in err["message"]
    r = s.post("/generate-concept", json={"room_type": "kitchen", "width": 512, "height": 512})
    assert r.status_code == 400 and r.json()["success"] is False
    assert s.post("/v1/jobs", json={"prompt": "ok", "width": 256, "height": 256,
                                    "steps": 10}).status_code == 202


# ---- 13. 413 from the headers ----

def test_413_before_the_body(make_server):
    s = make_server()
    head = (f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1:{s.port}\r\n"
            "Content-Type: application/json\r\nContent-Length: 10000000\r\n"
            "Expect: 100-continue\r\n\r\n").encode()
    out = raw(s.port, head)
    assert out.startswith(b"HTTP/1.1 413"), out[:200]
    assert b"100 Continue" not in out
    # a chunked body far over the cap is not read to its end: the connection closes
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as c:
        c.sendall((f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                   "Transfer-Encoding: chunked\r\n\r\n").encode())
        sent = 0
        try:
            for _ in range(4096):  # up to 64 MiB
                c.sendall(b"4000\r\n" + b" " * 0x4000 + b"\r\n")
                sent += 0x4000
        except OSError:
            pass
        assert sent < 8 << 20, f"the server read {sent} bytes of an oversized body"


# ---- 14. SIGTERM during the model load ----

def test_sigterm_during_model_load(easel, tmp_path):
    """A full-size SD1.5 checkpoint (a sparse file of zero weights, 1.7 GB) takes
    seconds to load; SIGTERM must stop the server at once, not after the load."""
    ckpt = tmp_path / "sd15-zeros.safetensors"
    write_sparse_sd15(ckpt)
    p = subprocess.Popen([easel, "serve", "--model", str(ckpt), "--port", "0", "--data-dir",
                          str(tmp_path / "data"), "--no-calibrate", "--workers", "1"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    port = None
    deadline = time.time() + 30
    line = ""
    while time.time() < deadline and port is None:
        line = p.stderr.readline()
        if line.startswith("easel serve: port "):
            port = int(line.split()[-1])
    assert port, line
    h = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json()
    assert h["status"] == "starting", h  # still loading
    t0 = time.time()
    p.send_signal(signal.SIGTERM)
    rc = p.wait(timeout=30)
    took = time.time() - t0
    assert rc == 0 and took < 1.5, (rc, took)


def write_sparse_sd15(path):
    """An SD1.5 single file with every tensor the loader asks for (names and
    shapes from tests/fixtures/names/sd15_ldm.txt), f16 zeros: the header and
    a hole the size of the data."""
    names = []
    with open(os.path.join(ROOT, "tests", "fixtures", "names", "sd15_ldm.txt")) as f:
        for line in f:
            parts = line.split()  # LDM name, component, diffusers name, shape
            if len(parts) == 4:
                names.append((parts[0], [int(x) for x in parts[3].split(",")]))
    header, off = {}, 0
    for name, shape in names:
        n = 2
        for d in shape:
            n *= d
        header[name] = {"dtype": "F16", "shape": shape, "data_offsets": [off, off + n]}
        off += n
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        f.truncate(8 + len(text) + off)
