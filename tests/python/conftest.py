"""Fixtures for the service tests: a real `easel serve` on a free loopback port,
with a tiny random-weight model made by `easel make-model` and a temp data dir.

The binary is $EASEL_BUILD/easel (tests/run_tests.sh sets EASEL_BUILD), else
build/easel. Tests skip, saying why, when the binary or make-model is missing.
"""
import os
import re
import subprocess
import sys
import time

import pytest
import requests

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "chaos"))
import common  # noqa: E402  (the chaos tools' Server and easel_binary)
from common import easel_binary  # noqa: E402

# The service tests are about behaviour, not numerics: their servers compute in
# fp32 unless a test asks otherwise, so the tiny model's "slow" jobs (SLOW,
# VERY_SLOW below) stay slow on CPUs whose bf16 path is 2-3x faster, and the
# timing of a test does not depend on which CPU CI draws. The bf16 path is
# served in test_models_api.py::test_serves_on_the_cpus_bf16_path and checked
# numerically by the C tests (test_backend_bf16, test_models_bf16).
os.environ.setdefault("EASEL_PRECISION", "fp32")

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(data):
    """(width, height) from a PNG's IHDR, asserting the signature."""
    assert data[:8] == PNG_MAGIC, "not a PNG"
    assert data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@pytest.fixture(scope="session")
def easel():
    exe = easel_binary()
    if not os.access(exe, os.X_OK):
        pytest.skip(f"no easel binary at {exe} (build first, or set EASEL_BUILD)")
    out = subprocess.run([exe, "--help"], capture_output=True, text=True)
    if "make-model" not in out.stdout + out.stderr or "serve" not in out.stdout + out.stderr:
        pytest.skip("this easel has no `make-model` or `serve` command yet")
    return exe


@pytest.fixture(scope="session")
def tiny_model(easel, tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "tiny"
    r = subprocess.run([easel, "make-model", "--arch", "tiny", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        pytest.skip(f"easel make-model failed: {r.stderr.strip()[-300:]}")
    return str(out)


class Server(common.Server):
    """One `easel serve` process (tests/chaos/common.py's, with a 2 s shutdown
    grace) plus requests-based helpers. start() waits until /healthz says ready."""

    def __init__(self, exe, model, data_dir, args=(), env=None):
        super().__init__(exe, model, data_dir, ["--shutdown-grace", "2s", *args], env)

    # -- helpers for the tests --
    def get(self, path, **kw):
        kw.setdefault("timeout", 10)
        return requests.get(self.url + path, **kw)

    def post(self, path, **kw):
        kw.setdefault("timeout", 10)
        return requests.post(self.url + path, **kw)

    def submit(self, **params):
        params.setdefault("prompt", "a red cube on a table")
        r = self.post("/v1/jobs", json=params)
        assert r.status_code == 202, r.text
        return r.json()

    def wait(self, job_id, statuses=("completed", "failed", "canceled"), timeout=120, **kw):
        deadline = time.time() + timeout
        while time.time() < deadline:
            j = self.get(f"/v1/jobs/{job_id}", **kw).json()
            if j["status"] in statuses:
                return j
            time.sleep(0.02)
        raise AssertionError(f"job {job_id} not in {statuses} after {timeout}s: {j}")

    def wait_step(self, job_id, step=1, timeout=60):
        """Waits until the job is processing and has made `step` steps."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            j = self.get(f"/v1/jobs/{job_id}").json()
            if j["status"] == "processing" and j["progress"]["step"] >= step:
                return j
            assert j["status"] in ("pending", "processing"), j
            time.sleep(0.01)
        raise AssertionError(f"job {job_id} made no step in {timeout}s")


@pytest.fixture
def make_server(easel, tiny_model, tmp_path):
    """Factory: make_server(args=[...], data_dir=None) -> a started Server. All stop at the end."""
    servers = []

    def make(args=(), data_dir=None, env=None, start=True):
        s = Server(easel, tiny_model, data_dir or tmp_path / f"data{len(servers)}", args, env)
        servers.append(s)
        return s.start() if start else s

    yield make
    for s in servers:
        if s.proc and s.proc.poll() is None:
            s.stop()


@pytest.fixture(scope="module")
def server(easel, tiny_model, tmp_path_factory):
    """A shared server (2 workers) for tests that need nothing special."""
    s = Server(easel, tiny_model, tmp_path_factory.mktemp("shared"), ["--workers", "2"])
    s.start()
    yield s
    s.stop()


# Sizes that make a job slow enough to observe mid-flight with the tiny model
# on the CPU in fp32 (about 15-100 ms per step at 256x256, by CPU).
SLOW = dict(width=256, height=256, steps=60)
VERY_SLOW = dict(width=512, height=512, steps=150)
