"""The seed's endpoints, field by field against the seed document
(/generate-concept, /image-status/{job_id}, /uploads/conceptual_images/...),
as its PHP backend and React polling use them."""
import os
import re
import time
import urllib.parse

import requests

from conftest import SLOW, UUID_RE, VERY_SLOW, png_size

DISCLAIMER = "Conceptual Visualization / Inspirational Preview"
IMAGE_RE = re.compile(
    r"^/uploads/conceptual_images/conceptual_(?P<room>[a-z0-9_]+)_(?P<date>\d{8})_(?P<time>\d{6})_"
    r"(?P<short>[0-9a-f]{8})\.png$")

ROOM = {"room_type": "living_room", "style": "Scandinavian", "colors": ["white", "light oak"],
        "features": ["large windows", "a linen sofa"], "description": "Bright and airy."}


def poll_until(s, job_id, statuses, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = s.get(f"/image-status/{job_id}")
        assert r.status_code == 200, r.text
        body = r.json()
        if body["status"] in statuses:
            return body
        time.sleep(0.02)
    raise AssertionError(f"{job_id}: not {statuses} after {timeout}s")


def test_generate_concept_answer(server):
    r = server.post("/generate-concept", json=dict(ROOM, steps=3, width=64, height=64))
    assert r.status_code == 200, r.text  # the seed answers 200, and its PHP checks for it
    assert r.headers["Content-Type"] == "application/json"
    body = r.json()
    assert body["success"] is True
    assert UUID_RE.match(body["job_id"])
    assert body["status"] == "pending"
    assert re.match(r"^\d+-\d+ seconds$", body["estimated_completion_time"]), body
    lo, hi = map(int, body["estimated_completion_time"].split()[0].split("-"))
    assert 1 <= lo < hi
    # the documented template over the room fields
    assert body["prompt"] == ("Interior design visualization of a Scandinavian living room, "
                              "featuring large windows, a linen sofa, color palette: white, "
                              "light oak. Bright and airy. Photorealistic, high quality, detailed,"
                              " natural lighting, professional interior photography.")


def test_completed_status_and_image(server):
    job = server.post("/generate-concept", json=dict(ROOM, steps=3, width=64, height=64)).json()
    done = poll_until(server, job["job_id"], ("completed", "failed"))
    assert done["success"] is True
    assert done["job_id"] == job["job_id"]
    assert done["status"] == "completed"
    m = IMAGE_RE.match(done["image_url"])
    assert m, done["image_url"]
    assert m["room"] == "living_room" and m["short"] == job["job_id"][:8]
    assert time.strptime(m["date"] + m["time"], "%Y%m%d%H%M%S")
    assert done["disclaimer"] == DISCLAIMER
    assert done["polling_instructions"] == {"continue_polling": False, "final_status": "completed"}
    assert done["conceptual_visualization"] == {"success": True, "image_url": done["image_url"],
                                                "disclaimer": DISCLAIMER}
    assert "progress" not in done and "error_message" not in done
    img = server.get(done["image_url"])
    assert img.status_code == 200 and img.headers["Content-Type"] == "image/png"
    assert png_size(img.content) == (64, 64)
    # the same job through the native API
    native = server.get(f"/v1/jobs/{job['job_id']}").json()
    assert native["status"] == "completed" and native["params"]["room"] == "living_room"


def test_processing_and_pending_status(make_server):
    s = make_server(["--workers", "1"])
    first = s.post("/generate-concept", json=dict(ROOM, **VERY_SLOW)).json()["job_id"]
    second = s.post("/generate-concept", json=dict(ROOM, **SLOW)).json()["job_id"]
    s.wait_step(first, step=2)
    for job_id, status in [(first, "processing"), (second, "pending")]:
        body = s.get(f"/image-status/{job_id}").json()
        assert body["success"] is True and body["job_id"] == job_id
        assert body["status"] == status
        p = body["progress"]
        assert isinstance(p["estimated_remaining_seconds"], (int, float))
        assert p["estimated_remaining_seconds"] > 0
        assert isinstance(p["progress_message"], str) and p["progress_message"]
        assert body["polling_instructions"] == {"continue_polling": True,
                                                "poll_interval_seconds": 3}
        assert "image_url" not in body and "disclaimer" not in body
    assert "queue" in s.get(f"/image-status/{second}").json()["progress"]["progress_message"]
    # canceled: final, with a message, and polling stops
    s.post(f"/v1/jobs/{second}/cancel")
    s.post(f"/v1/jobs/{first}/cancel")
    body = poll_until(s, first, ("canceled",))
    assert body["polling_instructions"] == {"continue_polling": False, "final_status": "canceled"}
    assert body["error_message"]


def test_failed_status(make_server, tmp_path):
    data = tmp_path / "failing"
    s = make_server(data_dir=data)
    # make the image write fail for real: the images dir becomes a plain file
    os.rename(data / "images", data / "images.moved")
    (data / "images").write_text("not a directory")
    job = s.post("/generate-concept", json={"prompt": "a kitchen", "steps": 1}).json()
    body = poll_until(s, job["job_id"], ("failed", "completed"))
    assert body["status"] == "failed"
    assert body["success"] is True and body["job_id"] == job["job_id"]
    assert "image" in body["error_message"]
    assert body["polling_instructions"] == {"continue_polling": False, "final_status": "failed"}
    assert "image_url" not in body


def test_plain_prompt_and_defaults(server):
    r = server.post("/generate-concept", json={"prompt": "a sunny bathroom"})
    body = r.json()
    assert r.status_code == 200 and body["prompt"] == "a sunny bathroom"
    native = server.get(f"/v1/jobs/{body['job_id']}").json()
    assert native["params"]["width"] == 64 and native["params"]["steps"] == 4  # server defaults
    assert native["params"]["negative_prompt"]  # a default negative prompt
    done = poll_until(server, body["job_id"], ("completed",))
    assert IMAGE_RE.match(done["image_url"])
    assert "conceptual_room_" in done["image_url"]  # no room type given


def test_form_encoded_like_php(server):
    form = urllib.parse.urlencode([("room_type", "Home Office"), ("style", "industrial"),
                                   ("features[]", "desk"), ("features[]", "bookshelf"),
                                   ("steps", "2")])
    r = server.post("/generate-concept", data=form,
                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert "industrial Home Office, featuring desk, bookshelf" in body["prompt"]
    done = poll_until(server, body["job_id"], ("completed",))
    assert IMAGE_RE.match(done["image_url"])["room"] == "home_office"


def test_nested_room_analysis(server):
    r = server.post("/generate-concept",
                    json={"room_analysis": {"room_type": "bedroom", "style": "boho"}, "steps": 1})
    assert r.status_code == 200
    assert r.json()["prompt"].startswith("Interior design visualization of a boho bedroom")


def test_estimate_comes_from_measured_step_times(make_server):
    s = make_server(["--workers", "1"])
    s.wait(s.submit(width=128, height=128, steps=10)["id"])  # measure this size
    short = s.post("/generate-concept", json=dict(ROOM, width=128, height=128, steps=5)).json()
    s.post(f"/v1/jobs/{short['job_id']}/cancel")
    s.wait(short["job_id"])
    long = s.post("/generate-concept", json=dict(ROOM, width=128, height=128, steps=150)).json()
    s.post(f"/v1/jobs/{long['job_id']}/cancel")
    a, b = short["estimated_completion_seconds"], long["estimated_completion_seconds"]
    assert a is not None and b is not None
    assert b > 5 * a, (a, b)  # 30x the steps: far longer, not a constant


def test_errors_in_the_seed_shape(server):
    r = server.get("/image-status/00000000-0000-4000-8000-000000000000")
    assert r.status_code == 404
    body = r.json()
    assert body["success"] is False and body["error"]["code"] == "not_found"
    assert body["error_message"]
    r = server.post("/generate-concept", json={"unrelated": 1})
    assert r.status_code == 400
    assert r.json()["success"] is False and r.json()["error"]["field"] == "room_type"
    r = server.post("/generate-concept", json=dict(ROOM, steps=500))
    assert r.status_code == 400 and r.json()["error"]["field"] == "steps"
    r = server.post("/generate-concept", data="x", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415
    assert server.get("/uploads/conceptual_images/../../easel.db").status_code == 404
    assert server.get("/uploads/conceptual_images/conceptual_x_20240101_000000_deadbeef.png"
                      ).status_code == 404
