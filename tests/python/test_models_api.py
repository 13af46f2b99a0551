"""What a client learns about the loaded model: GET /v1/models (OpenAI's list
shape with easel's fields), /healthz's model_info and random-weights notice,
and `easel info --model` on the command line (issues 16 and 23)."""
import subprocess

import pytest


def test_v1_models_lists_the_loaded_model(server):
    r = server.get("/v1/models")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and len(body["data"]) == 1
    m = body["data"][0]
    assert m["object"] == "model" and m["id"] == "tiny" and m["owned_by"] == "easel"
    assert m["family"] == "sd15" and m["prediction_type"] == "epsilon"
    assert m["scheduler"] == "PNDMScheduler" and m["default_sampler"] == "pndm"
    assert m["default_steps"] == 20 and m["default_guidance_scale"] == 7.5
    assert m["parameters"]["unet"] > 0 and m["random_weights"] is True
    h = server.get("/healthz").json()
    assert h["model_info"]["id"] == "tiny" and "random weights" in h["notice"]


def test_request_defaults_come_from_the_model(server):
    j = server.wait(server.submit(prompt="defaults")["id"])
    p = j["params"]
    # the conftest server passes --default-size 64x64 --default-steps 4; the sampler is the model's
    assert (p["width"], p["height"], p["steps"], p["sampler"]) == (64, 64, 4, "pndm"), p
    assert p["guidance_scale"] == 7.5
    r = server.post("/v1/jobs", json={"prompt": "x", "schedule": "karras"})
    assert r.status_code == 400 and r.json()["error"]["field"] == "schedule", r.text
    r = server.post("/v1/jobs", json={"prompt": "x", "sampler": "pndm", "schedule": "karras"})
    assert r.status_code == 400 and "not available" in r.json()["error"]["message"], r.text
    ok = server.submit(prompt="x", sampler="euler", schedule="karras", steps=2)
    j = server.wait(ok["id"])
    assert j["status"] == "completed" and j["params"]["schedule"] == "karras", j


def test_info_describes_the_model(easel, tiny_model):
    r = subprocess.run([easel, "info", "--model", tiny_model], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "family: sd15" in out and "PNDMScheduler" in out and "20 steps" in out, out
    assert "random weights" in out and "Real models" in out
    bad = subprocess.run([easel, "info", "--model", tiny_model + "-nope"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "not found" in bad.stderr


def test_serves_on_the_cpus_bf16_path(easel, make_server):
    """`--precision auto` (the product's default; the other service tests pin fp32)
    serves on bf16 where the CPU has AVX512-BF16 or AMX-BF16, and says so."""
    info = subprocess.run([easel, "info"], capture_output=True, text=True, timeout=60).stdout
    if "precision auto: bf16" not in info:
        pytest.skip("skipped: this CPU has no AVX512-BF16 or AMX-BF16 (auto serves fp32)")
    s = make_server(env={"EASEL_PRECISION": "auto"})
    assert s.get("/v1/models").json()["data"][0]["dtype"] == "bf16"
    j = s.wait(s.submit(prompt="bf16", steps=2)["id"])
    assert j["status"] == "completed", j
    assert s.get(j["image_url"]).content[:8] == b"\x89PNG\r\n\x1a\n"
    s32 = make_server(env={"EASEL_PRECISION": "fp32"})
    assert s32.get("/v1/models").json()["data"][0]["dtype"] == "f32"
