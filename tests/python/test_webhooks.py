"""Webhooks against a real `easel serve` and a real receiver (an HTTP server
in this test) that checks every delivery with the `standardwebhooks`
package (an implementation of the Standard Webhooks spec we did not
write): start, progress and completed events signed and verified; a
tampered and a replayed delivery rejected; a receiver that is down for the
first attempts gets each event exactly once (deduplicated by webhook-id)
later; kill -9 with deliveries pending delivers them after the restart;
private targets refused without --webhook-allow (literal ones at submit, a
name that resolves inside at delivery); delivery state in the job."""
import http.server
import json
import os
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
import requests

from conftest import VERY_SLOW

standardwebhooks = pytest.importorskip("standardwebhooks", reason="standardwebhooks not installed")

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


class Receiver:
    """Receives webhooks on a loopback port; fails the first `fail_first`
    attempts with 503; keeps every verified delivery once per webhook-id."""

    def __init__(self, fail_first=0, port=0):
        self.fail_left, self.raw, self.verified, self.bad = fail_first, [], {}, []
        self.attempts = 0
        rec = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                headers = {k: v for k, v in self.headers.items()}
                rec.attempts += 1
                if rec.fail_left > 0:
                    rec.fail_left -= 1
                    self.send_response(503)
                    self.end_headers()
                    return
                rec.raw.append((body, headers))
                try:
                    payload = standardwebhooks.Webhook(SECRET).verify(body, headers)
                    rec.verified.setdefault(headers["webhook-id"], payload)  # dedup by id
                except Exception as e:
                    rec.bad.append(str(e))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/hook"

    def events(self, job_id):
        return sorted(p["type"] for p in self.verified.values() if p["data"]["id"] == job_id)

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def hooked(make_server, data_dir=None, extra=()):
    return make_server(["--webhook-secret", SECRET, "--webhook-allow", "127.0.0.1", *extra],
                       data_dir=data_dir)


def wait_for(pred, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_events_signed_and_verified(make_server):
    rec = Receiver()
    s = hooked(make_server)
    try:
        jid = s.submit(steps=2, webhook=rec.url)["id"]
        assert s.wait(jid)["status"] == "completed"
        assert wait_for(lambda: "job.completed" in rec.events(jid)), rec.verified
        assert rec.events(jid) == ["job.completed", "job.started"] and not rec.bad
        done = [p for p in rec.verified.values() if p["type"] == "job.completed"][0]
        assert done["data"]["status"] == "completed" and done["data"]["image_url"]
        j = s.get(f"/v1/jobs/{jid}").json()
        assert j["webhook"]["url"] == rec.url
        assert {d["event"]: d["status"] for d in j["webhook"]["deliveries"]} == \
            {"start": "delivered", "completed": "delivered"}
        # a tampered body and a replay from later than the tolerance are refused
        body, headers = rec.raw[-1]
        wh = standardwebhooks.Webhook(SECRET)
        with pytest.raises(standardwebhooks.WebhookVerificationError):
            wh.verify(body.replace(b"completed", b"failed", 1), headers)
        old = dict(headers, **{"webhook-timestamp": str(int(time.time()) - 3600)})
        with pytest.raises(standardwebhooks.WebhookVerificationError):
            wh.verify(body, old)  # the signature covers the timestamp: an old replay fails
        assert "easel_webhooks_total{result=\"delivered\"} 2" in s.get("/metrics").text
    finally:
        rec.stop()


def test_progress_events_and_filter(make_server):
    rec = Receiver()
    s = hooked(make_server, extra=("--webhook-progress", "1s"))
    try:
        jid = s.submit(width=512, height=512, steps=150, webhook=rec.url,
                       webhook_events_filter=["progress", "completed"])["id"]
        assert wait_for(lambda: any(p["type"] == "job.progress" for p in rec.verified.values()
                                    if p["data"]["id"] == jid), 30)
        s.post(f"/v1/jobs/{jid}/cancel")
        assert wait_for(lambda: "job.completed" in rec.events(jid))
        assert "job.started" not in rec.events(jid)  # filtered out
        done = [p for p in rec.verified.values() if p["type"] == "job.completed"][0]
        assert done["data"]["status"] == "canceled"
    finally:
        rec.stop()


def test_receiver_down_then_delivered_once(make_server):
    rec = Receiver(fail_first=3)
    s = hooked(make_server)
    try:
        jid = s.submit(steps=1, webhook=rec.url, webhook_events_filter=["completed"])["id"]
        assert wait_for(lambda: rec.events(jid) == ["job.completed"], 30), rec.attempts
        time.sleep(1)
        assert rec.attempts == 4 and len(rec.raw) == 1  # 3 refused, 1 taken, no more
        d = s.get(f"/v1/jobs/{jid}").json()["webhook"]["deliveries"][0]
        assert d["status"] == "delivered" and d["attempts"] == 4, d
    finally:
        rec.stop()


def test_kill9_with_pending_delivery(make_server, tmp_path):
    data = tmp_path / "hooks"
    port = Receiver(port=0)
    p = port.port
    port.stop()  # nobody listens there yet
    s = hooked(make_server, data_dir=data)
    url = f"http://127.0.0.1:{p}/hook"
    jid = s.submit(steps=1, webhook=url, webhook_events_filter=["completed"])["id"]
    assert s.wait(jid)["status"] == "completed"
    time.sleep(0.5)  # a refused attempt or two
    s.kill9()
    rec = Receiver(port=p)
    try:
        hooked(make_server, data_dir=data)
        assert wait_for(lambda: rec.events(jid) == ["job.completed"], 30)
    finally:
        rec.stop()


def test_private_targets_refused(make_server):
    s = make_server(["--webhook-secret", SECRET])
    for url in ("http://127.0.0.1:9/x", "http://10.1.2.3/x", "http://[::1]/x",
                "http://localhost/x", "http://169.254.169.254/latest/meta-data"):
        r = s.post("/v1/jobs", json={"prompt": "x", "webhook": url})
        assert r.status_code == 400 and r.json()["error"]["field"] == "webhook", (url, r.text)
    r = s.post("/v1/jobs", json={"prompt": "x", "webhook": "ftp://example.com/x"})
    assert r.status_code == 400 and r.json()["error"]["field"] == "webhook"
    r = s.post("/v1/jobs", json={"prompt": "x", "webhook_events_filter": ["start"]})
    assert r.status_code == 400 and r.json()["error"]["field"] == "webhook_events_filter"


def test_name_resolving_inside_fails_at_delivery(make_server):
    """A name is not resolved at submit; every delivery checks the address it
    connects to. This machine's own hostname resolves (via /etc/hosts) to a
    loopback or private address, so the delivery must be refused even though a
    receiver listens there."""
    import ipaddress
    import socket
    name = socket.gethostname()
    try:
        addrs = {ai[4][0] for ai in socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)}
    except OSError:
        pytest.skip(f"skipped: this machine's hostname {name!r} does not resolve")
    if not addrs or any(ipaddress.ip_address(a.split("%")[0]).is_global for a in addrs):
        pytest.skip(f"skipped: {name!r} resolves to a public address {addrs}")
    inside = http.server.ThreadingHTTPServer(("0.0.0.0", 0), http.server.BaseHTTPRequestHandler)
    got = []
    inside.RequestHandlerClass.do_POST = lambda h: (got.append(h.path), h.send_response(200),
                                                    h.end_headers())
    threading.Thread(target=inside.serve_forever, daemon=True).start()
    try:
        s = make_server(["--webhook-secret", SECRET, "--webhook-retry", "3s"])
        url = f"http://{name}:{inside.server_address[1]}/hook"
        jid = s.submit(steps=1, webhook=url, webhook_events_filter=["completed"])["id"]
        assert s.wait(jid)["status"] == "completed"

        def failed():
            ds = s.get(f"/v1/jobs/{jid}").json()["webhook"]["deliveries"]
            return ds and ds[0]["status"] == "failed"
        assert wait_for(failed, 60)
        d = s.get(f"/v1/jobs/{jid}").json()["webhook"]["deliveries"][0]
        assert "public" in d["error"], d
        assert got == []
    finally:
        inside.shutdown()
        inside.server_close()
