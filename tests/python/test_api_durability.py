"""Durability: kill -9 mid-job and restart (every accepted job finishes),
a job interrupted three times fails with a reason, a graceful stop requeues
running work, retention deletes finished jobs and their images."""
import os
import time

from conftest import SLOW, VERY_SLOW, png_size


def test_kill9_mid_job_then_restart_finishes_everything(make_server, tmp_path):
    data = tmp_path / "crash"
    s = make_server(["--workers", "1"], data_dir=data)
    ids = [s.submit(width=256, height=256, steps=40, seed=i)["id"] for i in range(4)]
    s.wait_step(ids[0], step=2)
    s.kill9()

    s2 = make_server(["--workers", "1"], data_dir=data)
    for i, job_id in enumerate(ids):
        j = s2.wait(job_id, timeout=180)
        assert j["status"] == "completed", j
        assert j["params"]["seed"] == i
        assert png_size(s2.get(j["image_url"]).content) == (256, 256)
    assert s2.get(f"/v1/jobs/{ids[0]}").json()["attempts"] == 2  # interrupted once
    assert all(s2.get(f"/v1/jobs/{i}").json()["attempts"] == 1 for i in ids[1:])
    # no temp files left behind by the interrupted write
    assert all(f.endswith(".png") for f in os.listdir(data / "images"))


def test_partial_image_from_a_crash_is_removed(make_server, tmp_path):
    data = tmp_path / "partial"
    s = make_server(data_dir=data)
    s.stop()
    partial = data / "images" / ".0123.png.tmp.999.abcdef01"  # what a crash mid-write leaves
    partial.write_bytes(b"\x89PNG half")
    keep = data / "images" / "unrelated.png"
    keep.write_bytes(b"x")
    make_server(data_dir=data)
    assert not partial.exists() and keep.exists()


def test_three_interruptions_fail_the_job(make_server, tmp_path):
    data = tmp_path / "thrice"
    s = make_server(["--workers", "1"], data_dir=data)
    job_id = s.submit(**VERY_SLOW)["id"]
    for _ in range(3):
        s.wait_step(job_id)
        s.kill9()
        s = make_server(["--workers", "1"], data_dir=data)
    j = s.get(f"/v1/jobs/{job_id}").json()
    assert j["status"] == "failed", j
    assert "interrupted 3 times" in j["error"]
    assert j["finished_at"] is not None


def test_graceful_stop_requeues_running_job(make_server, tmp_path):
    data = tmp_path / "graceful"
    s = make_server(["--workers", "1", "--shutdown-grace", "0"], data_dir=data)
    running = s.submit(**SLOW)["id"]
    waiting = s.submit(steps=2)["id"]
    s.wait_step(running)
    t0 = time.time()
    assert s.stop() == 0
    assert time.time() - t0 < 10  # interrupted at its next step, not run to the end
    s2 = make_server(["--workers", "1"], data_dir=data)
    for job_id in (running, waiting):
        assert s2.wait(job_id, timeout=120)["status"] == "completed"
    assert s2.get(f"/v1/jobs/{running}").json()["attempts"] == 1  # a clean stop is no attempt


def test_retention_deletes_jobs_and_images(make_server, tmp_path):
    data = tmp_path / "retention"
    s = make_server(["--retention", "2s"], data_dir=data)
    a = s.submit(steps=1)
    j = s.wait(a["id"])
    files = os.listdir(data / "images")
    assert f"{a['id']}.png" in files
    assert s.get(j["image_url"]).status_code == 200
    deadline = time.time() + 15
    while time.time() < deadline and s.get(f"/v1/jobs/{a['id']}").status_code == 200:
        time.sleep(0.2)
    assert s.get(f"/v1/jobs/{a['id']}").status_code == 404
    assert s.get(j["image_url"]).status_code == 404
    assert f"{a['id']}.png" not in os.listdir(data / "images")
    # and it stays gone after a restart (deleted from the store too)
    s.stop()
    s2 = make_server(data_dir=data)
    assert s2.get(f"/v1/jobs/{a['id']}").status_code == 404


def test_accepted_jobs_survive_restart_with_their_state(make_server, tmp_path):
    data = tmp_path / "states"
    s = make_server(["--workers", "1"], data_dir=data)
    done = s.submit(steps=1)["id"]
    s.wait(done)
    blocker = s.submit(**VERY_SLOW)["id"]
    canceled = s.submit(steps=1)["id"]
    s.post(f"/v1/jobs/{canceled}/cancel")
    s.wait_step(blocker)
    s.post(f"/v1/jobs/{blocker}/cancel")
    s.wait(blocker)
    assert s.stop() == 0
    s2 = make_server(["--workers", "1"], data_dir=data)
    assert s2.get(f"/v1/jobs/{done}").json()["status"] == "completed"
    assert s2.get(f"/v1/jobs/{canceled}").json()["status"] == "canceled"
    assert s2.get(f"/v1/jobs/{blocker}").json()["status"] == "canceled"
    assert s2.get(f"/v1/jobs/{done}/image").status_code == 200
