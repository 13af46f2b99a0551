"""img2img and inpainting through the service (issue 19): POST /v1/uploads
(raw body and multipart), jobs naming uploads or carrying base64 inline,
what runs (only the last int(steps x strength) steps; keep_unmasked gives
the init image's pixels back outside the mask), the size from the image,
uploads and their jobs across a restart, and bad input: each a 4xx naming
the field with nothing left in DATA/uploads."""
import base64
import io
import os

import pytest
import requests

Image = pytest.importorskip("PIL.Image", reason="Pillow is not installed (.venv)")


def jpeg(w=96, h=64, color=(200, 40, 30)):
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def png(img):
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def b64(data):
    return base64.b64encode(data).decode()


def upload_files(s):
    d = os.path.join(s.data_dir, "uploads")
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


@pytest.fixture(scope="module")
def srv(easel, tiny_model, tmp_path_factory):
    from conftest import Server
    s = Server(easel, tiny_model, tmp_path_factory.mktemp("img2img"),
               ["--workers", "1", "--max-upload", "300000", "--default-steps", "4"])
    s.start()
    yield s
    s.stop()


def test_upload_raw_and_multipart(srv):
    data = jpeg()
    r = srv.post("/v1/uploads", data=data, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 201, r.text
    u = r.json()
    assert u["id"].startswith("upl_") and u["format"] == "jpeg"
    assert (u["width"], u["height"], u["bytes"], u["has_alpha"]) == (96, 64, len(data), False)
    assert srv.get(f"/v1/uploads/{u['id']}").json() == u
    r = srv.post("/v1/uploads", files={"file": ("room.jpg", data, "image/jpeg")})
    assert r.status_code == 201, r.text
    assert r.json()["id"] != u["id"] and r.json()["width"] == 96
    assert srv.get("/v1/uploads/upl_0123456789abcdef0123456789abcdef").status_code == 404


def test_img2img_runs_the_last_steps(srv):
    up = srv.post("/v1/uploads", data=jpeg()).json()["id"]
    j = srv.submit(init_image=up, strength=0.5, steps=8, seed=3)
    done = srv.wait(j["id"])
    assert done["status"] == "completed", done.get("error")
    p = done["params"]
    assert p["init_image"] == up and p["strength"] == 0.5 and p["resize_mode"] == "resize"
    # no size given: the image's 3:2 with the model's default long side (64), multiples of 8
    assert (p["width"], p["height"]) == (64, 64)  # 64x40 is below the 64 minimum: 64x64
    assert done["timings"]["steps_run"] == 4 and done["timings"]["image_encode_ms"] > 0
    img = Image.open(io.BytesIO(srv.get(f"/v1/jobs/{j['id']}/image").content))
    assert img.size == (64, 64)


def test_inpaint_inline_keeps_unmasked_pixels(srv):
    # the left half is repainted, the right half kept exactly (keep_unmasked)
    init = Image.new("RGB", (64, 64), (20, 160, 90))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    before = upload_files(srv)
    j = srv.submit(init_image=b64(png(init)), mask="data:image/png;base64," + b64(png(mask)),
                   keep_unmasked=True, width=64, height=64, steps=4, seed=5)
    done = srv.wait(j["id"])
    assert done["status"] == "completed", done.get("error")
    assert done["params"]["strength"] == 1 and done["params"]["mask_source"] == "luminance"
    assert len(upload_files(srv)) == len(before) + 4  # the two inline images became uploads
    out = Image.open(io.BytesIO(srv.get(f"/v1/jobs/{j['id']}/image").content)).convert("RGB")
    assert all(out.getpixel((x, y)) == (20, 160, 90) for x in range(40, 64) for y in range(64))


@pytest.mark.parametrize("case", [
    "not_image", "truncated_jpeg", "truncated_png", "bomb", "mask_size", "strength_high",
    "strength_no_image", "unknown_upload", "bad_id", "mask_no_image", "over_cap_inline",
    "mask_blur_no_mask"])
def test_bad_input_names_the_field(srv, case):
    from conftest import ROOT
    good = srv.post("/v1/uploads", data=jpeg()).json()["id"]
    before = upload_files(srv)
    fixtures = os.path.join(ROOT, "tests", "fixtures", "images")
    big = Image.new("L", (50, 64), 255)
    cases = {
        "not_image": ({"init_image": b64(b"hello, not an image")}, "init_image"),
        "truncated_jpeg": ({"init_image": b64(jpeg()[:300])}, "init_image"),
        "truncated_png": ({"init_image": b64(png(Image.new("RGB", (64, 64)))[:60])},
                          "init_image"),
        "bomb": ({"init_image": b64(open(os.path.join(fixtures, "bomb.png"), "rb").read())},
                 "init_image"),
        "mask_size": ({"init_image": good, "mask": b64(png(big))}, "mask"),
        "strength_high": ({"init_image": good, "strength": 1.5}, "strength"),
        "strength_no_image": ({"strength": 0.5}, "strength"),
        "unknown_upload": ({"init_image": "upl_0123456789abcdef0123456789abcdef"}, "init_image"),
        "bad_id": ({"init_image": good, "mask": 42}, "mask"),
        "mask_no_image": ({"mask": good}, "mask"),
        "over_cap_inline": ({"init_image": b64(os.urandom(70000))}, None),
        "mask_blur_no_mask": ({"init_image": good, "mask_blur": 4}, "mask_blur"),
    }
    body, field = cases[case]
    r = srv.post("/v1/jobs", json={"prompt": "a room", **body})
    if field is None:  # the JSON route's own cap (--max-body, 64 KiB): upload photos first
        assert r.status_code == 413, r.text
    else:
        assert r.status_code == 400, r.text
        assert r.json()["error"]["field"] == field, r.text
    assert upload_files(srv) == before, "a refused request left files in DATA/uploads"


def test_upload_bad_inputs(srv):
    before = upload_files(srv)
    r = srv.post("/v1/uploads", data=b"GIF89a not supported")
    assert r.status_code == 400 and r.json()["error"]["field"] == "body"
    r = srv.post("/v1/uploads", files={"file": ("x.jpg", jpeg()[:200], "image/jpeg")})
    assert r.status_code == 400 and r.json()["error"]["field"] == "file", r.text
    r = srv.post("/v1/uploads", files={"other": ("x.jpg", jpeg(), "image/jpeg")})
    assert r.status_code == 400 and r.json()["error"]["field"] == "file", r.text
    r = srv.post("/v1/uploads", data=os.urandom(300001))  # --max-upload 300000
    assert r.status_code == 413 and "--max-upload" in r.json()["error"]["message"]
    assert upload_files(srv) == before


def test_uploads_and_jobs_survive_a_restart(make_server, tmp_path):
    s = make_server(["--workers", "1", "--default-steps", "2"])
    up = s.post("/v1/uploads", data=jpeg(64, 64)).json()["id"]
    s.stop()
    s = make_server(["--workers", "1", "--default-steps", "2"], data_dir=s.data_dir)
    assert s.get(f"/v1/uploads/{up}").status_code == 200
    done = s.wait(s.submit(init_image=up, strength=0.75, steps=4)["id"])
    assert done["status"] == "completed" and done["timings"]["steps_run"] == 3


def test_concept_room_photo_bad_input(srv):
    before = upload_files(srv)
    r = srv.post("/generate-concept", json={"room_type": "kitchen", "room_image": b64(b"nope")})
    assert r.status_code == 400 and r.json()["error"]["field"] == "room_image", r.text
    assert r.json()["success"] is False
    r = srv.post("/generate-concept", data={"room_type": "kitchen"},
                 files={"image": ("r.jpg", jpeg()[:100], "image/jpeg")})
    assert r.status_code == 400 and r.json()["error"]["field"] == "image", r.text
    r = srv.post("/generate-concept", json={"room_type": "kitchen", "room_image": jpeg().hex(),
                                            "strength": 0.5})
    assert r.status_code == 400 and r.json()["error"]["field"] == "room_image", r.text
    r = srv.post("/generate-concept", json={"room_type": "kitchen", "room_image": b64(jpeg()),
                                            "strength": 7})
    assert r.status_code == 400 and r.json()["error"]["field"] == "strength", r.text
    assert upload_files(srv) == before

