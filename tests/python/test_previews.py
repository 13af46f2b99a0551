"""Live previews and the TAESD decoder through a real `easel serve` on the tiny
model (whose taesd/ make-model writes): with previews after every step the
job's status shows an increasing preview_step, GET /v1/jobs/{id}/preview is a
JPEG (or PNG) of the stated size with an ETag (304 on If-None-Match), 404
before the first and after the end; SSE delivers `preview` events in step
order, all before `final`; the final image is the same bytes with previews on
and off; /image-status carries progress.preview_url; "decoder": "taesd" runs
and an unknown decoder is a 400 naming it; a model without TAESD serves with
previews off (one log line), refuses "decoder": "taesd", and refuses to start
when previews are asked for explicitly."""
import io
import json
import shutil
import subprocess
import threading
import time

import pytest
import requests

from conftest import png_size

Image = pytest.importorskip("PIL.Image", reason="Pillow is not installed")

JOB = dict(prompt="a living room with a green sofa", width=256, height=256, steps=40, seed=11)


def image_of(data):
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def watch_previews(s, job_id, timeout=120):
    """Polls the job until it ends; returns (preview steps seen, a preview fetched
    mid-run as (bytes, headers), the final job)."""
    steps, fetched = [], None
    deadline = time.time() + timeout
    while time.time() < deadline:
        j = s.get(f"/v1/jobs/{job_id}").json()
        if j["status"] in ("completed", "failed", "canceled"):
            return steps, fetched, j
        if j["preview_step"] is not None:
            assert j["preview_url"] == f"/v1/jobs/{job_id}/preview"
            if not steps or steps[-1] != j["preview_step"]:
                steps.append(j["preview_step"])
            if fetched is None:
                r = s.get(j["preview_url"])
                if r.status_code == 200:
                    fetched = (r.content, r.headers)
        time.sleep(0.01)
    raise AssertionError("job did not finish")


def test_previews_every_step(make_server):
    s = make_server(["--workers", "1", "--previews", "1"])
    job = s.submit(**JOB)
    steps, fetched, final = watch_previews(s, job["id"])
    assert final["status"] == "completed", final
    assert len(steps) >= 3, steps  # polled every 10 ms over 40 steps
    assert steps == sorted(set(steps)), steps  # increasing
    assert all(1 <= k < JOB["steps"] for k in steps), steps  # none after the last step
    assert fetched is not None
    data, headers = fetched
    assert headers["Content-Type"] == "image/jpeg"
    assert headers["Cache-Control"] == "no-cache"
    assert headers["ETag"].startswith(f'"{job["id"]}.')
    im = image_of(data)
    assert im.format == "JPEG" and im.size == (256, 256) and im.mode == "RGB"
    # finished: the previews are gone, the job says so
    assert final["preview_url"] is None and final["preview_step"] is None
    r = s.get(f"/v1/jobs/{job['id']}/preview")
    assert r.status_code == 404 and "dropped" in r.json()["error"]["message"]
    metrics = s.get("/metrics").text
    n = [l for l in metrics.splitlines() if l.startswith("easel_previews_total ")]
    assert n and int(n[0].split()[1]) >= JOB["steps"] - 1, n


def test_preview_etag_and_404_before_the_first(make_server):
    s = make_server(["--workers", "1", "--previews", "15"])
    job = s.submit(**JOB)
    r = s.get(f"/v1/jobs/{job['id']}/preview")  # pending or before step 15
    assert r.status_code == 404, r.status_code
    assert r.json()["error"]["code"] == "no_preview"
    deadline = time.time() + 60
    while time.time() < deadline:
        r = s.get(f"/v1/jobs/{job['id']}/preview")
        if r.status_code == 200:
            break
        time.sleep(0.01)
    assert r.status_code == 200
    etag = r.headers["ETag"]
    again = s.get(f"/v1/jobs/{job['id']}/preview", headers={"If-None-Match": etag})
    # the next preview is 15 steps away: the same one, unchanged
    assert again.status_code == 304, again.status_code
    assert again.headers["ETag"] == etag and not again.content
    s.wait(job["id"])
    assert s.get("/v1/jobs/nope/preview").status_code == 404


def read_sse(url, out, stop):
    with requests.get(url, stream=True, timeout=120) as r:
        event = None
        for line in r.iter_lines(decode_unicode=True):
            if stop.is_set():
                return
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                out.append((event, json.loads(line[6:])))
                if event == "final":
                    return


def test_sse_preview_events_in_order_before_final(make_server):
    s = make_server(["--workers", "1", "--previews", "1"])
    blocker = s.submit(prompt="first", width=256, height=256, steps=20, seed=1)
    job = s.submit(**JOB)  # queued behind: the stream is open before it starts
    events, stop = [], threading.Event()
    t = threading.Thread(target=read_sse, args=(s.url + f"/v1/jobs/{job['id']}/events", events,
                                                stop))
    t.start()
    t.join(150)
    stop.set()
    s.wait(blocker["id"])
    names = [e for e, _ in events]
    assert names and names[-1] == "final", names[-5:]
    previews = [d for e, d in events if e == "preview"]
    assert len(previews) >= 3, names
    steps = [p["step"] for p in previews]
    assert steps == sorted(set(steps)) and steps[-1] < JOB["steps"], steps
    seqs = [p["seq"] for p in previews]
    assert seqs == sorted(set(seqs)), seqs
    p = previews[0]
    assert p["id"] == job["id"] and p["url"] == f"/v1/jobs/{job['id']}/preview"
    assert (p["width"], p["height"]) == (256, 256) and p["steps"] == JOB["steps"]
    # each preview event comes just before a progress event at least as far along
    for i, (e, d) in enumerate(events):
        if e == "preview":
            assert events[i + 1][0] in ("progress", "final")
            assert events[i + 1][1]["progress"]["step"] >= d["step"]
            assert events[i + 1][1]["preview_step"] in (d["step"], None)


def test_final_image_identical_with_previews_on_and_off(make_server):
    on = make_server(["--workers", "1", "--previews", "1"])
    off = make_server(["--workers", "1", "--previews", "off"])
    params = dict(JOB, steps=12, sampler="euler_a")
    a, b = on.submit(**params), off.submit(**params)
    ja, jb = on.wait(a["id"]), off.wait(b["id"])
    assert ja["status"] == jb["status"] == "completed"
    ia = on.get(ja["image_url"]).content
    ib = off.get(jb["image_url"]).content
    assert png_size(ia) == (256, 256)
    assert ia == ib  # bit for bit: previews only read the latents


def test_png_previews_downscaled(make_server):
    s = make_server(["--workers", "1", "--previews", "1", "--preview-format", "png",
                     "--preview-size", "100"])
    job = s.submit(**dict(JOB, width=320, height=192))
    _, fetched, final = watch_previews(s, job["id"])
    assert final["status"] == "completed" and fetched
    data, headers = fetched
    assert headers["Content-Type"] == "image/png"
    assert png_size(data) == (320 // 4, 192 // 4)  # the smallest whole factor to <= 100


def test_image_status_preview_url(make_server):
    s = make_server(["--workers", "1", "--previews", "1"])
    r = s.post("/generate-concept", json={"room_type": "kitchen", "style": "modern",
                                          "width": 256, "height": 256, "steps": 40})
    job_id = r.json()["job_id"]
    seen = None
    deadline = time.time() + 60
    while time.time() < deadline and not seen:
        st = s.get(f"/image-status/{job_id}").json()
        assert st["status"] in ("pending", "processing"), st
        seen = st.get("progress", {}).get("preview_url")
        time.sleep(0.01)
    assert seen == f"/v1/jobs/{job_id}/preview"
    assert s.get(seen).status_code in (200, 404)  # 404 only if it just finished
    s.wait(job_id)
    done = s.get(f"/image-status/{job_id}").json()
    assert done["status"] == "completed" and "preview_url" not in json.dumps(done)


def test_decoder_taesd_and_unknown_decoder(make_server):
    s = make_server(["--workers", "1"])
    base = dict(prompt="a lamp", width=128, height=128, steps=4, seed=3)
    t = s.submit(**base, decoder="taesd")
    v = s.submit(**base)
    jt, jv = s.wait(t["id"]), s.wait(v["id"])
    assert jt["status"] == jv["status"] == "completed"
    assert jt["params"]["decoder"] == "taesd" and "decoder" not in jv["params"]
    it, iv = s.get(jt["image_url"]).content, s.get(jv["image_url"]).content
    assert png_size(it) == png_size(iv) == (128, 128)
    assert it != iv  # another network decoded it
    for bad in ("tiny", 3):
        r = s.post("/v1/jobs", json=dict(base, decoder=bad))
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["field"] == "decoder" and "taesd" in err["message"], err
        if isinstance(bad, str):
            assert bad in err["message"]


def test_serve_decoder_taesd_default(make_server):
    s = make_server(["--workers", "1", "--decoder", "taesd"])
    j = s.wait(s.submit(prompt="x", steps=2)["id"])
    assert j["status"] == "completed" and j["params"]["decoder"] == "taesd"
    j = s.wait(s.submit(prompt="x", steps=2, decoder="vae")["id"])
    assert j["status"] == "completed" and "decoder" not in j["params"]


@pytest.fixture
def bare_model(tiny_model, tmp_path):
    d = tmp_path / "bare"
    shutil.copytree(tiny_model, d)
    shutil.rmtree(d / "taesd")
    return str(d)


def test_model_without_taesd(easel, bare_model, tiny_model, tmp_path):
    from conftest import Server
    s = Server(easel, bare_model, tmp_path / "d1", ["--workers", "1"]).start()
    try:
        j = s.wait(s.submit(**dict(JOB, steps=8))["id"])
        assert j["status"] == "completed" and j["preview_url"] is None
        r = s.post("/v1/jobs", json=dict(prompt="x", decoder="taesd"))
        assert r.status_code == 400 and r.json()["error"]["field"] == "decoder"
        assert "no TAESD" in r.json()["error"]["message"]
    finally:
        s.stop()
    log = open(s.log_path).read()
    assert log.count("live previews off: the model has no TAESD") == 1, log
    # asked for explicitly: a clear error at start, exit 2
    for i, args in enumerate((["--previews", "auto"], ["--previews", "2"],
                              ["--decoder", "taesd"])):
        bad = Server(easel, bare_model, tmp_path / f"bad{i}", args)
        with pytest.raises(RuntimeError) as e:
            bad.start(timeout=30)
        assert "has no TAESD" in str(e.value), str(e.value)[-500:]
        assert bad.proc.returncode == 2
    # --taesd PATH that does not exist: refused at start, naming it
    bad = Server(easel, bare_model, tmp_path / "bad9", ["--taesd", str(tmp_path / "missing")])
    with pytest.raises(RuntimeError) as e:
        bad.start(timeout=30)
    assert "missing" in str(e.value) and bad.proc.returncode == 2
    # --taesd PATH gives it one: previews again
    s = Server(easel, bare_model, tmp_path / "d2",
               ["--workers", "1", "--previews", "1", "--taesd", tiny_model + "/taesd"]).start()
    try:
        steps, fetched, j = watch_previews(s, s.submit(**JOB)["id"])
        assert j["status"] == "completed" and steps and fetched
    finally:
        s.stop()


def test_bad_preview_flags(easel, tiny_model, tmp_path):
    for args in (["--previews", "sometimes"], ["--previews", "0"], ["--preview-size", "8"],
                 ["--preview-format", "gif"]):
        r = subprocess.run([easel, "serve", "--model", tiny_model, "--data-dir",
                            str(tmp_path / "d"), "--port", "0", *args],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 2, (args, r.stderr)
        assert args[0] in r.stderr, r.stderr


def test_a1111_progress_current_image(make_server):
    """A1111's /sdapi/v1/progress carries the running image's live preview in
    current_image (base64), as A1111 itself does; skip_current_image=true leaves it out."""
    import base64
    s = make_server(["--workers", "1", "--previews", "1"])
    out = {}
    body = dict(prompt="a sunlit attic", steps=40, width=256, height=192, seed=4)
    t = threading.Thread(target=lambda: out.update(
        r=requests.post(s.url + "/sdapi/v1/txt2img", json=body, timeout=120)))
    t.start()
    seen, skipped = None, None
    deadline = time.time() + 60
    while time.time() < deadline and not seen:
        p = s.get("/sdapi/v1/progress").json()
        if p["current_image"]:
            seen = p
            skipped = s.get("/sdapi/v1/progress?skip_current_image=true").json()
        time.sleep(0.01)
    t.join(120)
    assert seen, "no current_image while it sampled"
    im = image_of(base64.b64decode(seen["current_image"]))
    assert im.format == "JPEG" and im.size == (256, 192)
    assert 1 <= seen["state"]["sampling_step"] <= 40
    assert skipped["current_image"] is None
    assert out["r"].status_code == 200
    assert s.get("/sdapi/v1/progress").json()["current_image"] is None  # idle
