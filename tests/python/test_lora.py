"""LoRA through the service (issue 17), against a real `easel serve` on the tiny
model: the directory at GET /v1/loras and /sdapi/v1/loras; jobs with `loras`
and with A1111's <lora:name:weight> prompt syntax (native, the seed's
/generate-concept, A1111's txt2img) give the images the engine gives (the
numerics against diffusers are tests/test_lora.c's); weight 0 is no LoRA, bit
for bit; files added while running are found; different LoRAs back to back
and interleaved on two workers give the same images as each alone; bad input
(unknown names, path traversal, another family, a corrupt file) is a 400
naming it, a file that goes bad after the submit fails its job and nothing
else; a set over --lora-cache fails its job, saying so."""
import base64
import os
import shutil
import subprocess

import pytest

from conftest import ROOT, SLOW

FIX = os.path.join(ROOT, "tests", "fixtures", "lora")


def assert_400(r, field, *words):
    assert r.status_code == 400, (r.status_code, r.text)
    err = r.json()["error"]
    assert err.get("field") == field, err
    for w in words:
        assert w in err["message"], err
    return err["message"]


@pytest.fixture(scope="module")
def loras(easel, tmp_path_factory):
    d = tmp_path_factory.mktemp("loras")
    shutil.copy(os.path.join(FIX, "kohya.safetensors"), d / "kohya.safetensors")
    shutil.copy(os.path.join(FIX, "peft.safetensors"), d / "peft.safetensors")
    subprocess.run([easel, "make-lora", "--arch", "tiny", "--format", "peft", "--conv", "--rank",
                    "3", "--out", str(d / "styles" / "locon.safetensors")], check=True,
                   capture_output=True, timeout=60)
    # another family: an SD1.5 LoRA (UNet only, rank 1: 3 MB) on the tiny model
    subprocess.run([easel, "make-lora", "--arch", "sd15", "--rank", "1", "--no-text-encoder",
                    "--out", str(d / "sd15.safetensors")], check=True, capture_output=True,
                   timeout=120)
    (d / "old.ckpt").write_bytes(b"PK\x03\x04not really")
    return d


@pytest.fixture(scope="module")
def srv(easel, tiny_model, loras, tmp_path_factory):
    from conftest import Server
    s = Server(easel, tiny_model, tmp_path_factory.mktemp("lora"),
               ["--workers", "2", "--lora-dir", str(loras)])
    s.start()
    yield s
    s.stop()


BASE = dict(prompt="a cozy living room", width=64, height=64, steps=3, seed=77,
            sampler="euler_a", guidance_scale=6.0)


def image(srv, **params):
    j = srv.wait(srv.submit(**{**BASE, **params})["id"])
    assert j["status"] == "completed", j
    return srv.get(f"/v1/jobs/{j['id']}/image").content, j


def test_list(srv):
    r = srv.get("/v1/loras")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list"
    by = {e["name"]: e for e in body["data"]}
    assert set(by) == {"kohya", "peft", "styles/locon", "sd15", "old"}, list(by)
    k, p = by["kohya"], by["peft"]
    assert k["format"] == "kohya" and p["format"] == "peft"
    assert k["base"] == "sd1" and k["base_from"] == "metadata"
    assert k["compatible"] and p["compatible"] and by["styles/locon"]["compatible"]
    assert k["layers"] == {"unet": 77, "text_encoder": 12, "conv": 16}, k["layers"]
    assert p["rank"] == 8 and p["rank_min"] == 4
    assert k["trigger_words"][:2] == ["green sofa", "watercolor"]
    assert k["metadata"]["ss_network_dim"] == "4"
    assert k["file"] == "kohya.safetensors" and k["size_bytes"] > 100000
    assert not by["sd15"]["compatible"] and "does not fit" in by["sd15"]["incompatible"]
    assert "pickle" in by["old"]["error"]
    a = srv.get("/sdapi/v1/loras").json()
    names = {e["name"]: e for e in a}
    assert names["kohya"]["alias"] == "kohya" and names["kohya"]["path"] == "kohya.safetensors"
    assert names["kohya"]["metadata"]["ss_base_model_version"] == "sd_v1"


def test_job_with_loras(srv):
    plain, _ = image(srv)
    with_k, j = image(srv, loras=[{"name": "kohya", "weight": 0.6}])
    assert with_k != plain
    assert j["params"]["loras"] == [{"name": "kohya", "weight": 0.6}]
    assert j["timings"]["lora_ms"] > 0 and isinstance(j["timings"]["lora_cached"], bool)
    both, j = image(srv, loras=[{"name": "kohya", "weight": 0.6}, {"name": "peft"}])
    assert both not in (plain, with_k)
    assert j["params"]["loras"][1] == {"name": "peft", "weight": 1}
    zero, j = image(srv, loras=[{"name": "kohya", "weight": 0}, {"name": "peft", "weight": 0}])
    assert zero == plain, "weight 0 must be no LoRA, bit for bit"
    sub, _ = image(srv, loras=[{"name": "styles/locon", "weight": 0.5}])
    stem, _ = image(srv, loras=[{"name": "locon", "weight": 0.5}])
    assert sub == stem != plain


def test_prompt_syntax(srv):
    want, _ = image(srv, prompt="a cozy living room ", loras=[{"name": "kohya", "weight": 0.6}])
    got, j = image(srv, prompt="a cozy living room <lora:kohya:0.6>")
    assert got == want
    assert j["params"]["prompt"] == "a cozy living room "
    assert j["params"]["loras"] == [{"name": "kohya", "weight": 0.6}]
    # the seed's endpoint
    r = srv.post("/generate-concept", json={"prompt": "a cozy living room <lora:kohya:0.6>",
                                            "width": 64, "height": 64, "steps": 3, "seed": 77})
    assert r.status_code in (200, 202), r.text
    job = srv.wait(r.json()["job_id"])
    assert job["status"] == "completed", job
    assert job["params"]["loras"] == [{"name": "kohya", "weight": 0.6}]
    assert "<lora" not in job["params"]["prompt"]
    # A1111's txt2img
    body = dict(prompt="a cozy living room <lora:kohya:0.6>", steps=3, width=64, height=64,
                seed=77, cfg_scale=6.0, sampler_name="Euler a")
    r = srv.post("/sdapi/v1/txt2img", json=body, timeout=60)
    assert r.status_code == 200, r.text
    tagged = base64.b64decode(r.json()["images"][0])
    r = srv.post("/sdapi/v1/txt2img", json=dict(body, prompt="a cozy living room "), timeout=60)
    assert base64.b64decode(r.json()["images"][0]) != tagged
    bad = srv.post("/sdapi/v1/txt2img", json=dict(body, prompt="x <lora:nope:1>"), timeout=60)
    assert bad.status_code in (400, 422) and "nope" in bad.text, bad.text


def test_bad_input(srv):
    assert_400(srv.post("/v1/jobs", json={**BASE, "loras": [{"name": "nope"}]}), "loras",
               "'nope'")
    assert_400(srv.post("/v1/jobs", json={**BASE, "prompt": "x <lora:nope:0.5>"}), "loras",
               "'nope'")
    for name in ["../loras/kohya", "/etc/passwd", "a/../../kohya", "..\\kohya"]:
        assert_400(srv.post("/v1/jobs", json={**BASE, "loras": [{"name": name}]}), "loras")
    msg = assert_400(srv.post("/v1/jobs", json={**BASE, "loras": [{"name": "sd15"}]}), "loras",
                     "does not fit")
    assert "sd1" in msg
    assert_400(srv.post("/v1/jobs", json={**BASE, "loras": [{"name": "old"}]}), "loras", "pickle")
    for loras in ["kohya", [{"name": 3}], [{"name": "kohya", "weight": "a"}],
                  [{"name": "kohya", "scale": 1}], [{"name": "kohya", "weight": 11}],
                  [{"name": "kohya"}, {"name": "kohya"}], [{"name": f"x{i}"} for i in range(9)]]:
        assert_400(srv.post("/v1/jobs", json={**BASE, "loras": loras}), "loras")
    assert_400(srv.post("/v1/jobs", json={**BASE, "prompt": "x <lora:kohya:1:2>"}), "prompt")


def test_added_while_running_and_corrupt(srv, loras):
    assert "late" not in {e["name"] for e in srv.get("/v1/loras").json()["data"]}
    shutil.copy(loras / "kohya.safetensors", loras / "late.safetensors")
    assert "late" in {e["name"] for e in srv.get("/v1/loras").json()["data"]}
    late, _ = image(srv, loras=[{"name": "late", "weight": 0.6}])
    same, _ = image(srv, loras=[{"name": "kohya", "weight": 0.6}])
    assert late == same
    # corrupt when submitted: 400, naming the file
    data = (loras / "kohya.safetensors").read_bytes()
    (loras / "cut.safetensors").write_bytes(data[: len(data) // 2])
    assert_400(srv.post("/v1/jobs", json={**BASE, "loras": [{"name": "cut"}]}), "loras", "cut")
    (loras / "cut.safetensors").unlink()


def test_goes_bad_after_submit(easel, tiny_model, loras, tmp_path):
    """One worker busy on a slow job; a LoRA job queued behind it; its file is
    truncated before it runs: that job fails with the reason, the server and
    the jobs after it are fine."""
    from conftest import Server
    (loras / "fragile.safetensors").write_bytes((loras / "kohya.safetensors").read_bytes())
    s = Server(easel, tiny_model, tmp_path / "data", ["--workers", "1", "--lora-dir", str(loras)])
    s.start()
    try:
        slow = s.submit(prompt="slow", **SLOW)["id"]
        s.wait_step(slow)
        bad = s.submit(**{**BASE, "loras": [{"name": "fragile"}]})["id"]
        data = (loras / "fragile.safetensors").read_bytes()
        (loras / "fragile.safetensors").write_bytes(data[:-100])
        j = s.wait(bad, timeout=180)
        assert j["status"] == "failed", j
        assert "fragile" in j["error"], j["error"]
        assert s.wait(slow)["status"] == "completed"
        ok = s.wait(s.submit(**{**BASE, "loras": [{"name": "kohya"}]})["id"])
        assert ok["status"] == "completed", ok
        assert s.get("/healthz").status_code == 200
    finally:
        s.stop()
        (loras / "fragile.safetensors").unlink()


def test_interleaved_workers_and_cache(srv):
    """Two workers, LoRA sets in turn: each image as the set's first one."""
    sets = [[{"name": "kohya", "weight": 0.6}], [{"name": "peft", "weight": 0.8}],
            [{"name": "kohya", "weight": 0.6}, {"name": "peft", "weight": -0.5}], []]
    ids = [srv.submit(**{**BASE, "seed": 5, "loras": sets[k % 4]})["id"] for k in range(12)]
    imgs = []
    for i in ids:
        j = srv.wait(i)
        assert j["status"] == "completed", j
        imgs.append(srv.get(f"/v1/jobs/{i}/image").content)
    for k in range(4, 12):
        assert imgs[k] == imgs[k % 4], f"job {k} (set {k % 4}) differs from its first"
    assert len(set(imgs[:4])) == 4


def test_over_the_cache_cap(easel, tiny_model, loras, tmp_path):
    from conftest import Server
    s = Server(easel, tiny_model, tmp_path / "data",
               ["--workers", "1", "--lora-dir", str(loras), "--lora-cache", "1k"])
    s.start()
    try:
        j = s.wait(s.submit(**{**BASE, "loras": [{"name": "kohya"}]})["id"])
        assert j["status"] == "failed" and "--lora-cache" in j["error"], j
        assert s.wait(s.submit(**BASE)["id"])["status"] == "completed"
    finally:
        s.stop()
