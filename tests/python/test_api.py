"""The native API against a real `easel serve` with a tiny model: the job
flow, images, listing, cancel, Server-Sent Events, the worker limit, every
error status with its JSON shape, health, metrics."""
import concurrent.futures
import datetime
import http.client
import json
import threading
import time

import pytest
import requests

from conftest import SLOW, UUID_RE, VERY_SLOW, png_size


def ts(s):
    assert s.endswith("Z"), s
    return datetime.datetime.fromisoformat(s[:-1] + "+00:00")


def assert_error(r, status, code=None, field=None):
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.headers.get("X-Request-Id")
    body = r.json()
    assert set(body) >= {"error"}
    err = body["error"]
    assert isinstance(err["code"], str) and err["code"]
    assert isinstance(err["message"], str) and err["message"]
    if code:
        assert err["code"] == code, err
    if field:
        assert err.get("field") == field, err
    return err


# ---- the native flow ----

def test_submit_poll_image(server):
    r = server.post("/v1/jobs", json={"prompt": "a lighthouse at dusk", "negative_prompt": "fog",
                                      "width": 64, "height": 96, "steps": 5, "guidance_scale": 6.5,
                                      "sampler": "euler", "seed": 1234})
    assert r.status_code == 202, r.text
    assert r.headers["Content-Type"] == "application/json"
    assert r.headers["Cache-Control"] == "no-store"
    assert r.headers.get("X-Request-Id")
    a = r.json()
    assert UUID_RE.match(a["id"]), a["id"]
    assert a["status"] == "pending"
    assert a["seed"] == 1234
    assert isinstance(a["queue_position"], int) and a["queue_position"] >= 0
    ts(a["created_at"])
    assert r.headers["Location"] == f"/v1/jobs/{a['id']}"
    assert a["links"] == {"self": f"/v1/jobs/{a['id']}", "image": f"/v1/jobs/{a['id']}/image",
                          "cancel": f"/v1/jobs/{a['id']}/cancel",
                          "events": f"/v1/jobs/{a['id']}/events"}

    j = server.wait(a["id"])
    assert j["status"] == "completed", j
    assert j["progress"] == {"step": 5, "steps": 5, "fraction": 1, "eta_seconds": 0}
    assert j["queue_position"] == 0
    assert j["params"] == {"prompt": "a lighthouse at dusk", "negative_prompt": "fog", "width": 64,
                           "height": 96, "steps": 5, "guidance_scale": 6.5, "sampler": "euler",
                           "seed": 1234}
    assert ts(j["created_at"]) <= ts(j["started_at"]) <= ts(j["finished_at"])
    assert j["attempts"] == 1
    assert j["error"] is None
    t = j["timings"]
    assert t["total_ms"] > 0 and t["sample_ms"] > 0 and t["total_ms"] >= t["sample_ms"]
    assert j["image_url"] == f"/v1/jobs/{a['id']}/image"

    status = server.get(f"/v1/jobs/{a['id']}")
    assert status.headers["Cache-Control"] == "no-store"
    img = server.get(j["image_url"])
    assert img.status_code == 200
    assert img.headers["Content-Type"] == "image/png"
    assert png_size(img.content) == (64, 96)
    etag = img.headers["ETag"]
    again = server.get(j["image_url"], headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""


def test_random_seed_is_echoed(server):
    a = server.submit(steps=1)
    assert isinstance(a["seed"], int) and a["seed"] >= 0
    j = server.wait(a["id"])
    assert j["params"]["seed"] == a["seed"]
    b = server.submit(steps=1)
    assert b["seed"] != a["seed"]  # 32 random bits: equal once in 4 billion


def test_same_seed_same_image(server):
    ids = [server.submit(prompt="same", steps=3, seed=77)["id"] for _ in range(2)]
    imgs = [server.get(server.wait(i)["image_url"]).content for i in ids]
    assert imgs[0] == imgs[1]
    other = server.submit(prompt="same", steps=3, seed=78)["id"]
    assert server.get(server.wait(other)["image_url"]).content != imgs[0]


def test_list_recent(server):
    ids = [server.submit(steps=1, prompt=f"list {i}")["id"] for i in range(3)]
    for i in ids:
        server.wait(i)
    r = server.get("/v1/jobs?limit=2")
    assert r.status_code == 200
    body = r.json()
    assert body["count"] == 2
    assert [j["id"] for j in body["jobs"]] == [ids[2], ids[1]]  # newest first
    done = server.get("/v1/jobs?status=completed&limit=100").json()["jobs"]
    assert done and all(j["status"] == "completed" for j in done)
    assert server.get("/v1/jobs?status=pending").json()["count"] == 0
    assert_error(server.get("/v1/jobs?status=bogus"), 400, "invalid_field", "status")
    assert_error(server.get("/v1/jobs?limit=0"), 400, "invalid_field", "limit")
    assert_error(server.get("/v1/jobs?limit=abc"), 400, "invalid_field", "limit")


def test_image_before_completion_is_409(make_server):
    s = make_server(["--workers", "1"])
    a = s.submit(**VERY_SLOW)
    assert_error(s.get(f"/v1/jobs/{a['id']}/image"), 409, "not_completed")
    s.post(f"/v1/jobs/{a['id']}/cancel")


# ---- cancel ----

def test_cancel_pending_and_processing(make_server):
    s = make_server(["--workers", "1"])
    first = s.submit(**VERY_SLOW)["id"]
    second = s.submit(**SLOW)["id"]
    s.wait_step(first)
    assert s.get(f"/v1/jobs/{second}").json()["queue_position"] == 1

    r = s.post(f"/v1/jobs/{second}/cancel")  # pending: at once
    assert r.status_code == 200
    assert r.json()["status"] == "canceled"
    assert s.get(f"/v1/jobs/{second}").json()["status"] == "canceled"

    r = s.post(f"/v1/jobs/{first}/cancel")  # processing: at the next step
    assert r.status_code == 200
    body = r.json()
    assert body["status"] in ("processing", "canceled")
    if body["status"] == "processing":
        assert body["cancel_requested"] is True
    j = s.wait(first, timeout=30)
    assert j["status"] == "canceled"
    assert j["progress"]["step"] < j["progress"]["steps"]
    assert j["image_url"] is None
    assert_error(s.post(f"/v1/jobs/{first}/cancel"), 409, "already_finished")
    # the worker is free again
    third = s.submit(steps=2)["id"]
    assert s.wait(third)["status"] == "completed"


def test_delete_cancels(make_server):
    s = make_server(["--workers", "1"])
    blocker = s.submit(**VERY_SLOW)["id"]
    victim = s.submit(steps=2)["id"]
    r = requests.delete(f"{s.url}/v1/jobs/{victim}", timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "canceled"
    requests.delete(f"{s.url}/v1/jobs/{blocker}", timeout=10)
    assert s.wait(blocker, timeout=30)["status"] == "canceled"


# ---- Server-Sent Events ----

def read_events(resp):
    event, data = None, []
    for raw in resp.iter_lines(decode_unicode=True):
        if raw is None:
            continue
        if raw == "":
            if event:
                yield event, json.loads("\n".join(data))
            event, data = None, []
        elif raw.startswith("event:"):
            event = raw[6:].strip()
        elif raw.startswith("data:"):
            data.append(raw[5:].strip())


def test_events_stream_progress_then_final(server):
    a = server.submit(width=128, height=128, steps=40)
    r = requests.get(f"{server.url}/v1/jobs/{a['id']}/events", stream=True, timeout=60)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/event-stream")
    events = list(read_events(r))
    names = [e for e, _ in events]
    assert names[-1] == "final" and names.count("final") == 1, names
    assert events[-1][1]["status"] == "completed"
    steps = [d["progress"]["step"] for e, d in events if e == "progress"]
    assert len(steps) >= 3, names
    assert steps == sorted(steps) and steps[-1] > steps[0]


def test_events_for_finished_job_end_at_once(server):
    a = server.submit(steps=1)
    server.wait(a["id"])
    r = requests.get(f"{server.url}/v1/jobs/{a['id']}/events", stream=True, timeout=10)
    events = list(read_events(r))
    assert [e for e, _ in events] == ["final"]



def test_events_stream_ends_with_final_after_cancel(make_server):
    """A stream following a running job that is canceled ends with its `final`
    event (the demo page once sat at "processing" after Cancel); five rounds."""
    s = make_server(["--workers", "1"])
    for _ in range(5):
        a = s.submit(**VERY_SLOW)
        r = requests.get(f"{s.url}/v1/jobs/{a['id']}/events", stream=True, timeout=20)
        events = read_events(r)
        for name, d in events:  # follow until the job has made a step
            assert name != "final", d
            if name == "progress" and d["progress"]["step"] > 0:
                break
        assert s.post(f"/v1/jobs/{a['id']}/cancel").status_code in (200, 202)
        rest = list(events)  # a missed wake-up would hang here until the read timeout
        assert rest and rest[-1][0] == "final" and rest[-1][1]["status"] == "canceled", rest



def test_prefer_wait(make_server):
    """Prefer: wait=N (RFC 7240): 200 with the finished job when it ends in
    time, else the 202 after N s; N capped at 60; the parked request holds no
    HTTP thread (with --threads 1 other requests are answered meanwhile)."""
    s = make_server(["--workers", "1", "--threads", "1"])
    r = s.post("/v1/jobs", json={"prompt": "quick", "steps": 2}, headers={"Prefer": "wait=9999"},
               timeout=70)
    assert r.status_code == 200, r.text
    assert r.headers["Preference-Applied"] == "wait=60"
    assert r.json()["status"] == "completed" and r.json()["image_url"]
    out = {}

    def slow():
        t0 = time.time()
        out["r"] = s.post("/v1/jobs", json={"prompt": "slow", **VERY_SLOW},
                          headers={"Prefer": "wait=3"}, timeout=30)
        out["t"] = time.time() - t0
    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.5)
    t0 = time.time()
    assert s.get("/healthz").status_code == 200  # answered while the wait is parked
    assert time.time() - t0 < 2
    t.join(30)
    r = out["r"]
    assert r.status_code == 202 and r.headers["Preference-Applied"] == "wait=3", r.text
    assert 2.5 < out["t"] < 15 and r.json()["status"] in ("pending", "processing")
    s.post(f"/v1/jobs/{r.json()['id']}/cancel")
    r = s.post("/v1/jobs", json={"prompt": "no wait", "steps": 2})
    assert r.status_code == 202 and "Preference-Applied" not in r.headers


# ---- scheduling ----

def test_two_workers_never_exceeded(make_server):
    s = make_server(["--workers", "2"])
    with concurrent.futures.ThreadPoolExecutor(10) as ex:
        jobs = list(ex.map(lambda i: s.submit(width=128, height=128, steps=25, seed=i), range(10)))
    ids = [j["id"] for j in jobs]
    most, seen_two = 0, False
    deadline = time.time() + 120
    while time.time() < deadline:
        listing = s.get("/v1/jobs?limit=100").json()["jobs"]
        mine = [j for j in listing if j["id"] in ids]
        running = sum(j["status"] == "processing" for j in mine)
        most = max(most, running)
        seen_two |= running == 2
        metrics = s.get("/metrics").text
        assert int(metric(metrics, "easel_jobs_running")) <= 2
        if all(j["status"] == "completed" for j in mine):
            break
        time.sleep(0.01)
    assert all(j["status"] == "completed" for j in mine), mine
    assert most <= 2 and seen_two, most
    # FIFO: started in creation order (two workers may swap neighbours)
    by_created = list(reversed(mine))  # the listing is newest first, in acceptance order
    by_start = sorted(by_created, key=lambda j: j["started_at"])
    for i, j in enumerate(by_start):
        assert abs(by_created.index(j) - i) <= 1


def metric(text, name):
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} missing")


def test_pending_jobs_get_queue_positions_and_eta(make_server):
    s = make_server(["--workers", "1"])
    first = s.submit(**VERY_SLOW)["id"]
    rest = [s.submit(**SLOW)["id"] for _ in range(3)]
    s.wait_step(first, step=2)
    positions = [s.get(f"/v1/jobs/{i}").json() for i in rest]
    assert [p["queue_position"] for p in positions] == [1, 2, 3]
    etas = [p["progress"]["eta_seconds"] for p in positions]
    assert all(e is not None and e > 0 for e in etas)
    assert etas[0] < etas[1] < etas[2]
    for i in [first] + rest:
        s.post(f"/v1/jobs/{i}/cancel")


# ---- errors ----

@pytest.mark.parametrize("body,field", [
    ({"width": 512}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": "x", "width": 65}, "width"),
    ({"prompt": "x", "width": 4096}, "width"),
    ({"prompt": "x", "height": 32}, "height"),
    ({"prompt": "x", "steps": 0}, "steps"),
    ({"prompt": "x", "steps": 2.5}, "steps"),
    ({"prompt": "x", "guidance_scale": -1}, "guidance_scale"),
    ({"prompt": "x", "sampler": "plms"}, "sampler"),
    ({"prompt": "x", "seed": -3}, "seed"),
    ({"prompt": "x", "colour": "red"}, "colour"),
    ({"prompt": "x" * 5000}, "prompt"),
])
def test_400_names_the_field(server, body, field):
    assert_error(server.post("/v1/jobs", json=body), 400, "invalid_field", field)


def test_400_bad_json(server):
    r = server.post("/v1/jobs", data="{nope", headers={"Content-Type": "application/json"})
    assert_error(r, 400, field="body")
    r = server.post("/v1/jobs", data="[1,2]", headers={"Content-Type": "application/json"})
    assert_error(r, 400, field="body")


def test_415_not_json(server):
    r = server.post("/v1/jobs", data="prompt=x", headers={"Content-Type": "text/plain"})
    assert_error(r, 415, "unsupported_media_type")


def test_413_body_cap(server):
    r = server.post("/v1/jobs", data=b"{" + b" " * (100 * 1024) + b"}",
                    headers={"Content-Type": "application/json"})
    assert_error(r, 413, "payload_too_large")


def test_404(server):
    assert_error(server.get("/v1/jobs/00000000-0000-4000-8000-000000000000"), 404, "not_found")
    assert_error(server.get("/v1/jobs/not-a-uuid"), 404, "not_found")
    assert_error(server.get("/v1/jobs/00000000-0000-4000-8000-000000000000/image"), 404)
    assert_error(server.post("/v1/jobs/00000000-0000-4000-8000-000000000000/cancel"), 404)
    assert_error(server.get("/nope"), 404, "not_found")


def test_405(server):
    r = requests.put(server.url + "/v1/jobs", json={"prompt": "x"}, timeout=10)
    assert_error(r, 405, "method_not_allowed")
    assert "POST" in r.headers["Allow"] and "GET" in r.headers["Allow"]
    assert_error(server.get("/generate-concept"), 405)
    assert_error(requests.get(server.url + "/v1/jobs/00000000-0000-4000-8000-000000000000/cancel",
                              timeout=10), 405)


def test_401_with_token(make_server):
    s = make_server(["--token", "s3cret-token"])
    assert_error(s.post("/v1/jobs", json={"prompt": "x"}), 401, "unauthorized")
    assert_error(s.post("/v1/jobs", json={"prompt": "x"},
                        headers={"Authorization": "Bearer s3cret-tokex"}), 401)
    assert_error(s.post("/v1/jobs", json={"prompt": "x"},
                        headers={"Authorization": "Bearer s3cret-token-and-more"}), 401)
    assert_error(s.get("/v1/jobs"), 401)
    assert_error(s.get("/metrics"), 401)
    assert_error(s.post("/generate-concept", json={"prompt": "x"}), 401)
    ok = s.post("/v1/jobs", json={"prompt": "x", "steps": 1},
                headers={"Authorization": "Bearer s3cret-token"})
    assert ok.status_code == 202
    assert s.get(f"/v1/jobs/{ok.json()['id']}", headers={"X-API-Key": "s3cret-token"}).ok
    assert s.get("/healthz").status_code == 200  # open
    assert s.get("/openapi.yaml").status_code == 200


def test_token_from_environment(make_server):
    s = make_server(env={"EASEL_TOKEN": "from-env"})
    assert_error(s.get("/v1/jobs"), 401)
    assert s.get("/v1/jobs", headers={"Authorization": "Bearer from-env"}).status_code == 200


def test_429_when_queue_full(make_server):
    s = make_server(["--workers", "1", "--queue-max", "2"])
    running = s.submit(**VERY_SLOW)["id"]
    s.wait_step(running)
    queued = [s.submit(**SLOW)["id"] for _ in range(2)]
    r = s.post("/v1/jobs", json={"prompt": "one too many"})
    assert_error(r, 429, "queue_full")
    assert int(r.headers["Retry-After"]) >= 1
    for i in [running] + queued:
        s.post(f"/v1/jobs/{i}/cancel")


def test_503_while_stopping(make_server):
    s = make_server(["--workers", "1", "--shutdown-grace", "20s"])
    running = s.submit(**VERY_SLOW)["id"]
    s.wait_step(running)
    s.proc.send_signal(15)
    time.sleep(0.3)
    r = s.post("/v1/jobs", json={"prompt": "too late"})
    assert_error(r, 503, "not_ready")
    assert int(r.headers["Retry-After"]) >= 1
    assert s.get(f"/v1/jobs/{running}").status_code == 200  # reads still served
    assert s.get("/healthz").status_code == 503
    s.post(f"/v1/jobs/{running}/cancel")
    assert s.stop() == 0


def test_request_id_echo(server):
    r = server.get("/healthz", headers={"X-Request-Id": "abc-123"})
    assert r.headers["X-Request-Id"] == "abc-123"
    r = server.get("/healthz", headers={"X-Request-Id": "bad id with spaces"})
    assert r.headers["X-Request-Id"] != "bad id with spaces"


def test_cors(make_server):
    s = make_server(["--cors-origin", "https://app.example"])
    r = s.get("/healthz")
    assert r.headers["Access-Control-Allow-Origin"] == "https://app.example"
    pre = requests.options(s.url + "/v1/jobs", timeout=10,
                           headers={"Origin": "https://app.example",
                                    "Access-Control-Request-Method": "POST"})
    assert pre.status_code == 204
    assert "POST" in pre.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in pre.headers["Access-Control-Allow-Headers"]


def test_keep_alive(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.connect()
    sock = conn.sock
    for _ in range(20):  # one connection serves all of them
        conn.request("GET", "/healthz")
        r = conn.getresponse()
        r.read()
        assert r.status == 200 and r.getheader("Connection", "").lower() != "close"
        assert conn.sock is sock
    conn.close()


# ---- health, metrics, openapi, the demo page ----

def test_healthz(server):
    r = server.get("/healthz")
    assert r.status_code == 200
    h = r.json()
    assert h["status"] == "ok" and h["ready"] is True
    assert h["workers"] == 2 and "tiny" in h["model"]


def test_metrics(server):
    server.wait(server.submit(steps=2)["id"])
    server.get("/nope")
    text = server.get("/metrics").text
    assert 'easel_jobs{status="completed"}' in text
    assert metric(text, "easel_queue_depth") >= 0
    assert "# TYPE easel_step_seconds histogram" in text
    assert 'easel_step_seconds_bucket{le="+Inf"}' in text
    assert metric(text, "easel_step_seconds_count") >= 2
    assert metric(text, "easel_job_seconds_count") >= 1
    assert 'easel_http_requests_total{route="/v1/jobs",status="202"}' in text
    assert 'easel_http_requests_total{route="other",status="404"}' in text
    # histogram buckets are cumulative
    buckets = [float(l.split()[-1]) for l in text.splitlines()
               if l.startswith("easel_step_seconds_bucket")]
    assert buckets == sorted(buckets)


def test_openapi_and_demo_page(server):
    r = server.get("/openapi.yaml")
    assert r.status_code == 200 and r.text.startswith("openapi: 3.1")
    for path in ["/v1/jobs:", "/v1/jobs/{id}:", "/v1/jobs/{id}/events:", "/generate-concept:",
                 "/image-status/{job_id}:", "/healthz:", "/metrics:"]:
        assert "\n  " + path in r.text, path
    page = server.get("/")
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert 'id="prompt"' in page.text and "EventSource" in page.text
    assert "http://" not in page.text.replace("http://www.w3.org", "")  # no CDN


def test_concurrent_polls_are_consistent(server):
    a = server.submit(width=128, height=128, steps=30)
    errors = []

    def poll():
        with requests.Session() as sess:
            last = -1
            for _ in range(200):
                j = sess.get(f"{server.url}/v1/jobs/{a['id']}", timeout=5).json()
                if j["progress"]["step"] < last:
                    errors.append((last, j["progress"]["step"]))
                last = j["progress"]["step"]

    threads = [threading.Thread(target=poll) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    server.wait(a["id"])


def test_413_chunked_body_without_length(server):
    def chunks():
        for _ in range(80):
            yield b" " * 1024
    r = server.post("/v1/jobs", data=chunks(), headers={"Content-Type": "application/json"})
    assert_error(r, 413, "payload_too_large")


# ---- connection limits ----

@pytest.mark.skip(reason="skipped: flaky on the 2-core AMD EPYC (2 of 5 full runs): the fifth "
                  "connection is sometimes answered, and sometimes one of the first four is "
                  "refused; cause not found yet (libmicrohttpd's thread pool and per-IP count?)")
def test_per_ip_limit_and_idle_timeout(make_server):
    import socket
    # a 5 s timeout, and the fifth connection tried up to 6 times over ~1.5 s: on a loaded
    # machine the server may accept the idle four late (once, in CI, the fifth was answered
    # 0.5 s after them), and with a 1 s timeout one of them timed out before the fifth came
    s = make_server(["--per-ip-limit", "4", "--conn-timeout", "5s"])
    idle = [socket.create_connection(("127.0.0.1", s.port)) for _ in range(4)]
    t_idle = time.time()
    answers = []
    for _ in range(6):
        time.sleep(0.25)
        extra = socket.create_connection(("127.0.0.1", s.port))
        extra.settimeout(5)
        extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            got = extra.recv(100)
        except ConnectionResetError:
            got = b""
        extra.close()
        if got == b"":
            break
        answers.append(got)
    # the 5th connection from this address is closed unanswered
    assert got == b"", answers
    time.sleep(max(0.0, t_idle + 5.5 - time.time()))  # idle connections time out after 5 s
    for c in idle:
        c.settimeout(5)
        try:
            assert c.recv(100) == b""
        except ConnectionResetError:
            pass
        c.close()
    assert s.get("/healthz").status_code == 200  # slots are free again
