"""AUTOMATIC1111's /sdapi/v1, spoken to by a published client (webuiapi,
mix1009/sdwebuiapi on PyPI) and by Open WebUI's own request sequence
(options -> sd-models -> options -> txt2img, Basic auth), against a real
`easel serve`: images, info with seeds and infotexts, batches, progress,
interrupt and skip of this API's current request, options, the lists,
errors in FastAPI's shape."""
import base64
import json
import threading
import time

import pytest
import requests

webuiapi = pytest.importorskip("webuiapi", reason="webuiapi is not installed (.venv)")

TOKEN = "a1111-token-K7xQ2"


@pytest.fixture(scope="module")
def srv(easel, tiny_model, tmp_path_factory):
    from conftest import Server
    s = Server(easel, tiny_model, tmp_path_factory.mktemp("a1111"),
               ["--workers", "1", "--token", TOKEN])
    s.start()
    yield s
    s.stop()


@pytest.fixture
def api(srv):
    return webuiapi.WebUIApi(baseurl=srv.url + "/sdapi/v1", username="any", password=TOKEN,
                             sampler="Euler a", steps=2)


def test_webuiapi_txt2img(api):
    r = api.txt2img(prompt="a watercolor fox", negative_prompt="blurry", seed=1234, steps=2,
                    width=64, height=64, cfg_scale=6.5, batch_size=2, sampler_name="Euler a")
    assert len(r.images) == 2 and r.images[0].size == (64, 64)
    info = r.info
    assert info["all_seeds"] == [1234, 1235] and info["seed"] == 1234
    assert info["sampler_name"] == "Euler a" and info["steps"] == 2 and info["cfg_scale"] == 6.5
    assert info["infotexts"][0].startswith("a watercolor fox\nNegative prompt: blurry\nSteps: 2, ")
    assert "Sampler: Euler a" in info["infotexts"][0] and "Seed: 1234" in info["infotexts"][0]
    assert "Seed: 1235" in info["infotexts"][1]
    assert r.parameters["prompt"] == "a watercolor fox"
    again = api.txt2img(prompt="a watercolor fox", negative_prompt="blurry", seed=1235, steps=2,
                        width=64, height=64, cfg_scale=6.5)
    assert again.images[0].tobytes() == r.images[1].tobytes()


def test_webuiapi_lists_and_options(api, srv):
    assert "Euler a" in api.util_get_sampler_names() and "DPM++ 2M" in api.util_get_sampler_names()
    assert "Karras" in [s["label"] for s in api.get_schedulers()]
    assert api.util_get_model_names() == ["tiny"]
    opts = api.get_options()
    assert opts["sd_model_checkpoint"] == "tiny"
    api.set_options({"sd_model_checkpoint": "tiny", "CLIP_stop_at_last_layers": 1})
    r = requests.post(srv.url + "/sdapi/v1/options", json={"sd_model_checkpoint": "other"},
                      auth=("u", TOKEN), timeout=10)
    assert r.status_code == 400 and "not loaded" in r.json()["detail"][0]["msg"], r.text
    assert api.get_loras() == []


def test_open_webui_flow(srv):
    """The requests Open WebUI's A1111 engine sends, as it sends them."""
    auth = "Basic " + base64.b64encode(f"user:{TOKEN}".encode()).decode()
    h = {"authorization": auth}
    opts = requests.get(srv.url + "/sdapi/v1/options", headers=h, timeout=10).json()
    models = requests.get(srv.url + "/sdapi/v1/sd-models", headers=h, timeout=10).json()
    assert opts["sd_model_checkpoint"] == models[0]["title"]
    r = requests.post(srv.url + "/sdapi/v1/options",
                      json={"sd_model_checkpoint": models[0]["title"]}, headers=h, timeout=10)
    assert r.status_code == 200
    r = requests.post(srv.url + "/sdapi/v1/txt2img", headers=h, timeout=120,
                      json={"prompt": "a cozy room", "batch_size": 1, "width": 64, "height": 64,
                            "steps": 2, "cfg_scale": 7, "sampler_name": "DPM++ 2M",
                            "scheduler": "Karras", "negative_prompt": ""})
    assert r.status_code == 200, r.text
    res = r.json()
    png = base64.b64decode(res["images"][0])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    info = json.loads(res["info"])
    assert "Schedule type: Karras" in info["infotexts"][0]


def test_progress_interrupt_skip(api, srv):
    out = {}

    def run():
        out["r"] = api.txt2img(prompt="slow", steps=150, width=512, height=512, batch_size=3,
                               seed=5)

    t = threading.Thread(target=run)
    t.start()
    deadline = time.time() + 30
    p = {}
    while time.time() < deadline:
        p = api.get_progress()
        if p["state"]["job_count"] == 3 and p["state"]["sampling_step"] >= 1:
            break
        time.sleep(0.05)
    assert p["state"]["job_count"] == 3 and p["progress"] > 0, p
    assert p["state"]["job_no"] == 0 and p["state"]["sampling_steps"] == 150
    api.skip()  # the first image only
    deadline = time.time() + 30
    while time.time() < deadline and api.get_progress()["state"]["job_no"] < 1:
        time.sleep(0.05)
    assert api.get_progress()["state"]["job_no"] == 1
    api.interrupt()  # the rest
    t.join(60)
    assert not t.is_alive()
    r = out["r"]
    assert r.images == [] and len(r.info["all_seeds"]) == 3  # nothing finished: no image
    idle = api.get_progress()
    assert idle["state"]["job_count"] == 0 and idle["progress"] == 0


def test_errors_fastapi_shape(srv):
    auth = ("u", TOKEN)
    r = requests.post(srv.url + "/sdapi/v1/txt2img", json={"prompt": "x", "sampler_name": "Nope"},
                      auth=auth, timeout=10)
    assert r.status_code == 404 and "Sampler not found" in r.json()["detail"], r.text
    r = requests.post(srv.url + "/sdapi/v1/txt2img", json={"prompt": "x", "width": 70},
                      auth=auth, timeout=10)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "width"], r.text
    r = requests.post(srv.url + "/sdapi/v1/txt2img", json={"prompt": "x", "enable_hr": True},
                      auth=auth, timeout=10)
    assert r.status_code == 422, r.text
    r = requests.post(srv.url + "/sdapi/v1/txt2img", json={"prompt": "x"}, timeout=10)
    assert r.status_code == 401 and "detail" in r.json()
    r = requests.post(srv.url + "/sdapi/v1/txt2img", json={"prompt": "x", "steps": 2,
                      "some_extension_field": {"a": 1}, "width": 64, "height": 64},
                      auth=auth, timeout=60)
    assert r.status_code == 200, r.text  # unknown fields are ignored, as A1111 does


def test_webuiapi_img2img_and_inpainting(api):
    from PIL import Image
    im = Image.new("RGB", (96, 64), (200, 40, 30))
    r = api.img2img(images=[im], prompt="a sofa", denoising_strength=0.5, steps=8, width=96,
                    height=64, seed=3)
    assert r.image.size == (96, 64)
    assert r.info["denoising_strength"] == 0.5
    assert "Denoising strength: 0.5" in r.info["infotexts"][0]
    again = api.img2img(images=[im], prompt="a sofa", denoising_strength=0.5, steps=8, width=96,
                        height=64, seed=3)
    assert again.image.tobytes() == r.image.tobytes()
    # inpainting: white = repaint; the unmasked half is pasted back (A1111's overlay)
    mask = Image.new("L", (96, 64), 0)
    mask.paste(255, (0, 0, 40, 64))
    r = api.img2img(images=[im], mask_image=mask, prompt="a sofa", steps=4, width=96, height=64,
                    mask_blur=0, inpainting_fill=1)
    out = r.image.convert("RGB")
    assert all(out.getpixel((x, y)) == (200, 40, 30) for x in range(56, 96) for y in range(64))


def test_img2img_errors(srv):
    hdr = {"Authorization": f"Bearer {TOKEN}"}
    r = requests.post(srv.url + "/sdapi/v1/img2img", json={"prompt": "x"}, headers=hdr,
                      timeout=10)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "init_images", r.text
    r = requests.post(srv.url + "/sdapi/v1/img2img", headers=hdr, timeout=10,
                      json={"prompt": "x", "init_images": [base64.b64encode(b"nope").decode()]})
    assert r.status_code == 400 and r.json()["detail"][0]["loc"][-1] == "init_images", r.text

