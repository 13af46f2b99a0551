"""schemathesis against /openapi.yaml (bounded): no 5xx, every status,
content type, header and body as the document says, invalid requests
rejected and valid ones accepted. The events stream is left out (it stays
open until its job ends); `use_after_free` too, because DELETE /v1/jobs/{id}
cancels a job (as POST .../cancel does) and the canceled job stays readable,
by design.

OpenAI's and A1111's routes get a second, lighter pass: their request
schemas are theirs (loose, with many fields easel refuses unless left at
their defaults), so only "no 5xx, documented status, content type and
body" is asserted there; their behaviour is tested with the real clients
(test_openai_api.py, test_a1111_api.py)."""
import os
import shutil
import subprocess
import sys

import pytest

CHECKS = ",".join([
    "not_a_server_error", "status_code_conformance", "content_type_conformance",
    "response_headers_conformance", "response_schema_conformance",
    "negative_data_rejection", "positive_data_acceptance", "missing_required_header",
    "unsupported_method", "allow_header_conformance",
])


def schemathesis_cli():
    exe = os.path.join(os.path.dirname(sys.executable), "schemathesis")
    return exe if os.access(exe, os.X_OK) else shutil.which("schemathesis")


COMPAT_CHECKS = ",".join([
    "not_a_server_error", "status_code_conformance", "content_type_conformance",
    "response_schema_conformance",
])
COMPAT_TAGS = "^(openai|a1111)$"


HOOKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schemathesis_hooks.py")


def run_schemathesis(cli, s, tmp_path, name, args, timeout, hooks=""):
    cmd = [cli, "run", f"{s.url}/openapi.yaml", "--url", s.url, "--seed", "20261125",
           "--request-timeout", "60", "--no-color"] + args
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                       env=dict(os.environ, SCHEMATHESIS_HOOKS=hooks))
    (tmp_path / f"{name}.txt").write_text(r.stdout + r.stderr)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]


def make_uploads(s, tmp_path, monkeypatch):
    """The uploads a positive generated job names (schemathesis_hooks.py)."""
    from PIL import Image
    import io
    import requests
    buf = io.BytesIO()
    Image.new("RGB", (96, 64), (120, 80, 40)).save(buf, "JPEG")
    img = requests.post(s.url + "/v1/uploads", data=buf.getvalue(), timeout=10)
    buf = io.BytesIO()
    Image.new("L", (96, 64), 255).save(buf, "PNG")
    mask = requests.post(s.url + "/v1/uploads", data=buf.getvalue(), timeout=10)
    assert img.status_code == 201 and mask.status_code == 201, img.text + mask.text
    monkeypatch.setenv("EASEL_SCHEMA_UPLOAD_IMAGE", img.json()["id"])
    monkeypatch.setenv("EASEL_SCHEMA_UPLOAD_MASK", mask.json()["id"])


@pytest.mark.timeout(600)
def test_openapi_contract(make_server, easel, tmp_path, monkeypatch):
    cli = schemathesis_cli()
    if not cli:
        pytest.skip("schemathesis is not installed (make deps installs it into .venv)")
    # small defaults and a short queue keep the generated jobs cheap
    # --max-pixels 0: the spec states the engine's ranges; a server's cost limits are the
    # operator's (tested in test_defects.py)
    # the LoRAs a generated job may name (schemathesis_hooks.py renames them to these)
    loras = tmp_path / "loras"
    for i in range(8):
        subprocess.run([easel, "make-lora", "--arch", "tiny", "--rank", "2", "--seed", str(i),
                        "--out", str(loras / f"style{i}.safetensors")], check=True,
                       capture_output=True, timeout=60)
    s = make_server(["--workers", "2", "--queue-max", "16", "--default-steps", "2",
                     "--max-pixels", "0", "--lora-dir", str(loras)])
    make_uploads(s, tmp_path, monkeypatch)
    run_schemathesis(cli, s, tmp_path, "native", [
        "--checks", CHECKS, "--max-examples", "25",
        "--exclude-path", "/v1/jobs/{id}/events", "--exclude-tag-regex", COMPAT_TAGS,
        # an upload's body is an image, which no schema can generate (any bytes are
        # "valid" by the schema, and not an image is rightly a 400): test_img2img_api.py
        "--exclude-operation-id", "createUpload"],
        timeout=580, hooks=HOOKS)


@pytest.mark.timeout(600)
def test_openapi_compat_routes(make_server, tmp_path):
    cli = schemathesis_cli()
    if not cli:
        pytest.skip("schemathesis is not installed (make deps installs it into .venv)")
    # the default --max-pixels (1024x1024) bounds what a generated size can cost
    s = make_server(["--workers", "2", "--queue-max", "16", "--default-steps", "2"])
    run_schemathesis(cli, s, tmp_path, "compat", [
        "--checks", COMPAT_CHECKS, "--max-examples", "15", "--include-tag-regex", COMPAT_TAGS],
        timeout=580)
