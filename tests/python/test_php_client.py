"""The seed's PHP backend (tests/php/seed_client.php: php-cli + php-curl, the
connector's shape from the seed document) against a real `easel serve`: start
with room fields, nested room_analysis, non-ASCII text and a description over
the 600-byte cap, poll /image-status until completed, fetch the PNG; every
reply must decode with PHP's json_decode. JSON bodies and form bodies."""
import json
import os
import shutil
import subprocess

import pytest

from conftest import ROOT

CLIENT = os.path.join(ROOT, "tests", "php", "seed_client.php")


def php_with_curl():
    php = shutil.which("php")
    if not php:
        return None
    r = subprocess.run([php, "-r", "echo function_exists('curl_init') ? 'yes' : 'no';"],
                       capture_output=True, text=True)
    return php if r.stdout.strip() == "yes" else None


@pytest.mark.parametrize("mode", ["json", "form"])
def test_seed_php_client_flow(make_server, mode):
    php = php_with_curl()
    if not php:
        pytest.skip("no php-cli with php-curl (apt: php-cli php-curl; make test installs them)")
    s = make_server(["--workers", "1"])
    r = subprocess.run([php, CLIENT, s.url, mode], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["ok"] and out["status"] == "completed", out
    assert out["prompt_shortened"] is True, out  # the description was over 600 bytes
    assert "Kachelofen" in out["prompt"] and "crème" in out["prompt"], out["prompt"]
    assert out["disclaimer"] == "Conceptual Visualization / Inspirational Preview"
    assert out["image_url"].startswith("/uploads/conceptual_images/conceptual_living_room_")
    assert out["image_code"] == 200 and out["image_type"] == "image/png" and out["image_png"]
    assert out["replies_decoded"] == out["polls"] + 1


@pytest.mark.parametrize("mode", ["photo", "photo64"])
def test_seed_php_client_room_photo(make_server, tmp_path, mode):
    """The room photo from PHP: a CURLFile (multipart) or base64 in JSON; the job restyles it
    (img2img at the documented default strength 0.6) and completes."""
    php = php_with_curl()
    if not php:
        pytest.skip("no php-cli with php-curl (apt: php-cli php-curl; make test installs them)")
    from PIL import Image
    photo = tmp_path / "room.jpg"
    Image.new("RGB", (96, 64), (180, 150, 120)).save(photo, "JPEG")
    s = make_server(["--workers", "1"])
    r = subprocess.run([php, CLIENT, s.url, mode, str(photo)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["ok"] and out["status"] == "completed" and out["image_png"], out
    assert "Kachelofen" in out["prompt"], out["prompt"]
    job = s.get(f"/v1/jobs/{out['job_id']}").json()
    p = job["params"]
    assert p["init_image"].startswith("upl_") and p["strength"] == 0.6, p
    assert job["timings"]["steps_run"] == 1  # int(2 x 0.6)
    assert (p["width"], p["height"]) == (64, 64)  # as the request said

