"""OpenAI's Images API, spoken to by the official `openai` Python package
(the client Open WebUI, LibreChat and many scripts are built on) against a
real `easel serve`: generations as b64_json and as URLs, n images, output
formats, quality, size, easel's extra fields, errors in OpenAI's shape,
the model list."""
import base64
import io
import time

import pytest
import requests

openai = pytest.importorskip("openai", reason="the openai package is not installed (.venv)")

TOKEN = "sk-easel-test-Zq8vN3x"


@pytest.fixture(scope="module")
def srv(easel, tiny_model, tmp_path_factory):
    from conftest import Server
    s = Server(easel, tiny_model, tmp_path_factory.mktemp("openai"),
               ["--workers", "2", "--token", TOKEN])
    s.start()
    yield s
    s.stop()


@pytest.fixture
def client(srv):
    return openai.OpenAI(base_url=srv.url + "/v1", api_key=TOKEN, max_retries=0, timeout=120)


def png_dims(data):
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_generate_b64_json(client):
    r = client.images.generate(prompt="a lighthouse at dusk", model="tiny", n=2, size="64x64",
                               response_format="b64_json", extra_body={"seed": 7, "steps": 2})
    assert len(r.data) == 2 and r.created > 0
    imgs = [base64.b64decode(d.b64_json) for d in r.data]
    assert all(png_dims(i) == (64, 64) for i in imgs)
    assert imgs[0] != imgs[1]  # seeds 7 and 8
    assert r.data[0].revised_prompt == "a lighthouse at dusk"
    again = client.images.generate(prompt="a lighthouse at dusk", n=1, size="64x64",
                                   response_format="b64_json", extra_body={"seed": 8, "steps": 2})
    assert base64.b64decode(again.data[0].b64_json) == imgs[1]  # n images = consecutive seeds


def test_generate_url_expires_and_is_signed(client, srv):
    r = client.images.generate(prompt="a red chair", size="64x64", response_format="url",
                               extra_body={"steps": 2})
    url = r.data[0].url
    assert url.startswith(srv.url + "/v1/images/files/") and "sig=" in url and "expires=" in url
    got = requests.get(url, timeout=10)  # no token needed: the signature is the key
    assert got.status_code == 200 and got.headers["Content-Type"] == "image/png"
    assert png_dims(got.content) == (64, 64)
    bad = requests.get(url[:-4] + "0000", timeout=10)
    assert bad.status_code == 403 and bad.json()["error"]["type"] == "permission_error"
    forged = url.replace("expires=", "expires=1")
    assert requests.get(forged, timeout=10).status_code == 403


def test_output_formats_and_quality(client):
    r = client.images.generate(prompt="a vase", size="64x64", response_format="b64_json",
                               output_format="jpeg", extra_body={"steps": 2})
    assert base64.b64decode(r.data[0].b64_json)[:3] == b"\xff\xd8\xff" and r.output_format == "jpeg"
    r = client.images.generate(prompt="a vase", size="64x64", response_format="b64_json",
                               output_format="webp", output_compression=80,
                               extra_body={"steps": 2})
    data = base64.b64decode(r.data[0].b64_json)
    assert data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    r = client.images.generate(prompt="a vase", size="64x64", quality="low",
                               response_format="b64_json")
    assert r.quality == "low"


def test_errors_in_openai_shape(client, srv):
    with pytest.raises(openai.BadRequestError) as e:
        client.images.generate(prompt="x", n=11, size="64x64")
    assert e.value.body["param"] == "n" and e.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as e:
        client.images.generate(prompt="x", size="70x64")
    assert e.value.body["param"] == "size"
    with pytest.raises(openai.BadRequestError) as e:
        client.images.generate(prompt="x", model="some-other-model")
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.images.generate(prompt="x", extra_body={"bogus": 1})
    assert e.value.body["param"] == "bogus" and e.value.body["code"] == "unknown_parameter"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=srv.url + "/v1", api_key="wrong", max_retries=0).images.generate(
            prompt="x")
    r = requests.post(srv.url + "/v1/images/generations", data="{nope",
                      headers={"Authorization": f"Bearer {TOKEN}",
                               "Content-Type": "application/json"}, timeout=10)
    assert r.status_code == 400 and set(r.json()["error"]) >= {"message", "type", "param", "code"}


def test_models_list(client):
    ids = [m.id for m in client.models.list()]
    assert ids == ["tiny"]


def rgba_png(w, h, transparent_left=True):
    from PIL import Image
    im = Image.new("RGBA", (w, h), (30, 120, 200, 255))
    if transparent_left:
        im.paste((30, 120, 200, 0), (0, 0, w // 2, h))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def test_edit_with_the_images_own_alpha(client):
    """images.edit as DALL-E 2 documents it: no mask, the image's transparency marks what to
    repaint; n images, b64_json, the size asked for."""
    from PIL import Image
    r = client.images.edit(image=("room.png", rgba_png(96, 64), "image/png"), prompt="a sofa",
                           n=2, size="96x64", response_format="b64_json",
                           extra_body={"seed": 9, "steps": 2})
    assert len(r.data) == 2
    imgs = [Image.open(io.BytesIO(base64.b64decode(d.b64_json))) for d in r.data]
    assert all(i.size == (96, 64) for i in imgs)
    assert imgs[0].tobytes() != imgs[1].tobytes()  # seeds 9 and 10


def test_edit_with_a_mask_and_urls(client):
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 180, 20)).save(buf, "JPEG")
    r = client.images.edit(image=("room.jpg", buf.getvalue(), "image/jpeg"),
                           mask=("mask.png", rgba_png(64, 64), "image/png"), prompt="a lamp",
                           response_format="url", extra_body={"steps": 2})
    png = requests.get(r.data[0].url, timeout=10).content
    assert png_dims(png) == (64, 64)
    # no mask, opaque image: img2img at easel's strength
    r = client.images.edit(image=("room.jpg", buf.getvalue(), "image/jpeg"), prompt="a lamp",
                           extra_body={"steps": 4, "strength": 0.5})
    assert r.data[0].url


def test_edit_errors_name_the_param(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.images.edit(image=("x.png", b"not a png", "image/png"), prompt="x")
    assert e.value.body["param"] == "image"
    with pytest.raises(openai.BadRequestError) as e:
        client.images.edit(image=("r.png", rgba_png(96, 64), "image/png"),
                           mask=("m.png", rgba_png(48, 64), "image/png"), prompt="x")
    assert e.value.body["param"] == "mask" and "must match" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.images.edit(image=("r.png", rgba_png(64, 64), "image/png"), prompt="x",
                           extra_body={"strength": 3})
    assert e.value.body["param"] == "strength"


def test_client_gone_cancels_its_jobs(srv):
    """A synchronous request whose client hangs up does not keep rendering."""
    hdr = {"Authorization": f"Bearer {TOKEN}"}
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(srv.url + "/v1/images/generations",
                      json={"prompt": "slow", "size": "512x512", "steps": 150, "n": 2},
                      headers=hdr, timeout=1.5)
    deadline = time.time() + 15
    while time.time() < deadline:
        jobs = requests.get(srv.url + "/v1/jobs?limit=5", headers=hdr, timeout=10).json()["jobs"]
        mine = [j for j in jobs if j["params"]["prompt"] == "slow"]
        if mine and all(j["status"] == "canceled" for j in mine):
            break
        time.sleep(0.2)
    assert mine and all(j["status"] == "canceled" for j in mine), [j["status"] for j in mine]
