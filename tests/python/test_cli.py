"""The first five minutes (issue 23), as a new user meets them: one set of
names across the CLI and the API (the API's names with dashes, today's
short forms kept as aliases, every --help listing them), the random-weight
notice, and `make run MODEL=...` checking the model before serving."""
import os
import signal
import socket
import subprocess
import time

import requests

from conftest import ROOT

API_NAMES = ["--prompt", "--negative-prompt", "--width", "--height", "--steps",
             "--guidance-scale", "--sampler", "--schedule", "--eta", "--seed", "--clip-skip"]
LOAD_NAMES = ["--family", "--prediction-type", "--scheduler-config"]


def run(easel, *args, timeout=300):
    return subprocess.run([easel, *args], capture_output=True, text=True, timeout=timeout)


def test_generate_takes_the_api_names_and_the_short_ones(easel, tiny_model, tmp_path):
    common = ["--model", tiny_model, "--prompt", "a red cube", "--width", "64", "--height", "64",
              "--steps", "3", "--seed", "11", "--sampler", "euler", "--quiet"]
    a, b = tmp_path / "api.png", tmp_path / "short.png"
    r = run(easel, "generate", *common, "--negative-prompt", "blue", "--guidance-scale", "5",
            "--out", str(a))
    assert r.returncode == 0, r.stderr
    r = run(easel, "generate", *common, "--negative", "blue", "--cfg", "5", "--out", str(b))
    assert r.returncode == 0, r.stderr
    assert a.read_bytes() == b.read_bytes()  # the same flags under two names
    # and the names mean what the API's do: another negative prompt, another image
    c = tmp_path / "other.png"
    r = run(easel, "generate", *common, "--negative-prompt", "green", "--guidance-scale", "5",
            "--out", str(c))
    assert r.returncode == 0 and c.read_bytes() != a.read_bytes()


def test_help_lists_the_api_names(easel):
    gen = run(easel, "generate", "--help")
    assert gen.returncode == 0
    for name in API_NAMES + LOAD_NAMES:
        assert name in gen.stdout, name
    for cmd in ("serve", "info"):
        h = run(easel, cmd, "--help")
        assert h.returncode == 0
        for name in LOAD_NAMES:
            assert name in h.stdout, (cmd, name)
    serve = run(easel, "serve", "--help").stdout
    for name in ("--default-size", "--default-steps", "--max-steps", "--max-pixels"):
        assert name in serve


def test_bad_flags_exit_2_naming_them(easel, tiny_model, tmp_path):
    r = run(easel, "generate", "--model", tiny_model, "--prompt", "x", "--out",
            str(tmp_path / "x.png"), "--cfg-scale", "5")
    assert r.returncode == 2 and "--cfg-scale" in r.stderr, r.stderr
    r = run(easel, "generate", "--model", tiny_model, "--prompt", "x", "--out",
            str(tmp_path / "x.png"), "--guidance-scale", "99")
    assert r.returncode == 2 and "guidance-scale" in r.stderr, r.stderr


def test_generate_says_random_weights(easel, tiny_model, tmp_path):
    r = run(easel, "generate", "--model", tiny_model, "--prompt", "x", "--steps", "1",
            "--width", "64", "--height", "64", "--out", str(tmp_path / "x.png"))
    assert r.returncode == 0, r.stderr
    assert "random weights" in r.stderr and "Real models" in r.stderr, r.stderr
    info = run(easel, "info", "--model", tiny_model)
    assert info.returncode == 0
    assert "family: sd15" in info.stdout and "random weights" in info.stdout


def test_a1111_names_only_on_a1111_routes(server):
    r = server.post("/v1/jobs", json={"prompt": "x", "cfg_scale": 5})
    assert r.status_code == 400 and r.json()["error"]["field"] == "cfg_scale"
    r = server.post("/v1/jobs", json={"prompt": "x", "sampler_name": "Euler"})
    assert r.status_code == 400 and r.json()["error"]["field"] == "sampler_name"
    r = server.post("/sdapi/v1/txt2img", json={"prompt": "x", "cfg_scale": 5, "steps": 1,
                                                "width": 64, "height": 64,
                                                "sampler_name": "Euler"}, timeout=120)
    assert r.status_code == 200, r.text


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_run(easel, tmp_path, model):
    env = dict(os.environ, EASEL_DEFAULT_SIZE="64x64")
    return subprocess.Popen(
        ["make", "--no-print-directory", "-C", ROOT, "run",
         f"BUILD={os.path.dirname(easel)}", f"MODEL={model}", f"DATA={tmp_path / 'data'}",
         f"PORT={free_port()}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        start_new_session=True)


def test_make_run_checks_the_model_first(easel, tiny_model, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"{}")
    p = make_run(easel, tmp_path, bad)
    out, _ = p.communicate(timeout=300)
    assert p.returncode != 0
    assert "cannot be served" in out and "smaller than" in out and "Real models" in out, out
    assert "listening" not in out
    assert "precision " not in out and " info " not in out, out  # the reason, not easel info's report

    p = make_run(easel, tmp_path, tiny_model)
    lines, deadline = [], time.time() + 300
    try:
        while time.time() < deadline:
            line = p.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "listening on" in line:
                break
        text = "".join(lines)
        assert "family: sd15" in text and "defaults:" in text and "random weights" in text, text
        port = int(text.split("listening on http://127.0.0.1:")[1].split()[0])
        for _ in range(600):  # ready once the model is loaded
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        h = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json()
        assert h["ready"] and h["model_info"]["random_weights"] is True, h
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(timeout=60)


def test_generate_img2img_and_inpainting(easel, tiny_model, tmp_path):
    """--init-image / --strength / --mask: the same image as the service's job with the same
    upload, seed and fields (one pipeline), only the last steps run, the unmasked half kept
    with --keep-unmasked, and bad input refused naming the flag (exit 2, no file)."""
    from PIL import Image
    Image.new("RGB", (96, 64), (40, 90, 200)).save(tmp_path / "room.png")
    mask = Image.new("L", (96, 64), 0)
    mask.paste(255, (0, 0, 48, 64))
    mask.save(tmp_path / "mask.png")
    Image.new("L", (50, 64), 0).save(tmp_path / "small.png")
    common = ["--model", tiny_model, "--prompt", "a bright room", "--seed", "4"]
    out = tmp_path / "i2i.png"
    r = run(easel, "generate", *common, "--init-image", str(tmp_path / "room.png"),
            "--strength", "0.5", "--steps", "8", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "img2img from" in r.stderr and "4 of 8 steps run" in r.stderr, r.stderr
    assert Image.open(out).size == (64, 64)  # 3:2 at the tiny model's 64, at least 64
    out2 = tmp_path / "inpaint.png"
    r = run(easel, "generate", *common, "--init-image", str(tmp_path / "room.png"), "--mask",
            str(tmp_path / "mask.png"), "--keep-unmasked", "--width", "96", "--height", "64",
            "--steps", "3", "--out", str(out2))
    assert r.returncode == 0, r.stderr
    img = Image.open(out2).convert("RGB")
    assert all(img.getpixel((x, y)) == (40, 90, 200) for x in range(56, 96) for y in range(64))
    bad = tmp_path / "bad.png"
    for args, word in [(["--init-image", str(tmp_path / "mask.png"), "--mask",
                         str(tmp_path / "small.png")], "mask"),
                       (["--strength", "0.5"], "strength"),
                       (["--init-image", str(tmp_path / "room.png"), "--strength", "1.5"],
                        "--strength"),
                       (["--init-image", os.devnull], "--init-image")]:
        r = run(easel, "generate", *common, *args, "--out", str(bad))
        assert r.returncode == 2 and word in r.stderr, (args, r.stderr)
        assert not bad.exists()
