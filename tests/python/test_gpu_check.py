"""`make gpu-check` (tools/gpu_check.sh) and its carry (tools/gpu_check/carry.sh)
without a GPU: the dry run passes with every GPU stage saying "skipped: no CUDA
device"; a machine where nvidia-smi sees a GPU but the CUDA backend cannot
start fails (a fake nvidia-smi here); a stage that hangs is cut at its limit
with the log it wrote so far; a short budget skips stages instead of running
past it; the carried archive runs in a clean root (glibc and CUDA libraries
only). Uses the build under test ($EASEL_BUILD) instead of building."""
import os
import shutil
import stat
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.abspath(os.environ.get("EASEL_BUILD", os.path.join(ROOT, "build")))
SCRIPT = os.path.join(ROOT, "tools", "gpu_check.sh")

FAKE_SMI = """#!/bin/sh
case "$*" in
  *-L*) echo "GPU 0: NVIDIA H200 (UUID: GPU-00000000-fake)" ;;
  *query-gpu=name,driver_version,memory.total*) echo "NVIDIA H200, 580.00, 143771 MiB" ;;
  *query-gpu=name*) echo "NVIDIA H200" ;;
  *query-gpu=driver_version*) echo "580.00" ;;
  *) echo "NVIDIA-SMI (a fake: a GPU listed, no driver behind it)" ;;
esac
"""


def need_cuda_build():
    if not os.access(os.path.join(BUILD, "tests", "test_ops_gpu"), os.X_OK):
        pytest.skip(f"skipped: {BUILD} has no CUDA build (test_ops_gpu); nvcc was not found")
    if shutil.which("nvidia-smi"):
        pytest.skip("skipped: this machine has nvidia-smi: the no-GPU behaviour cannot be shown")


def run(tmp_path, extra_env=None, path_prefix=None, bin_dir=None):
    env = dict(os.environ)
    env.update({"OUT": str(tmp_path / "out"), "GC_STATE": str(tmp_path / "state"),
                "GPU_CHECK_BIN": bin_dir or BUILD, "GPU_CHECK_RESULTS": str(tmp_path / "results")})
    env.pop("GC_OUT", None)
    if path_prefix:
        env["PATH"] = f"{path_prefix}:{env['PATH']}"
    env.update(extra_env or {})
    p = subprocess.run(["bash", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    stages = {}
    for line in (tmp_path / "state" / "stages.tsv").read_text().splitlines():
        name, status, _ = line.split("\t")
        stages[name] = status
    return p, stages


def test_dry_run_without_gpu(tmp_path):
    need_cuda_build()
    p, st = run(tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert list(st) == ["versions", "build", "ops", "e2e", "torch", "sanitize"]
    assert st["versions"] == "pass" and st["build"] == "pass", st
    for s in ("ops", "e2e", "torch", "sanitize"):
        assert st[s] == "skipped: no CUDA device", (s, st[s])
    out = sorted(os.listdir(tmp_path / "out"))
    assert [f for f in out if f.endswith(".log")] == [
        "1-versions.log", "2-build.log", "3-ops.log", "4-e2e.log", "5-torch.log", "6-sanitize.log"]
    assert len(out) <= 8, out  # the device tool returns at most 8 files
    report = [f for f in out if f.endswith(".md")]
    assert report and "skipped: no CUDA device" in (tmp_path / "out" / report[0]).read_text()
    assert not (tmp_path / "results").exists(), "a run without a GPU wrote results"
    assert "skipped: no CUDA device" in (tmp_path / "out" / "3-ops.log").read_text()


def test_fails_when_a_gpu_is_visible_but_the_backend_cannot_start(tmp_path):
    need_cuda_build()
    fake = tmp_path / "fakebin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text(FAKE_SMI)
    (fake / "nvidia-smi").chmod(0o755)
    p, st = run(tmp_path, path_prefix=str(fake))
    assert p.returncode == 1, "gpu-check passed with a GPU visible and no working backend"
    assert st["ops"].startswith("FAIL: a GPU is visible (nvidia-smi) but the CUDA backend "
                                "cannot start"), st["ops"]
    assert st["e2e"].startswith("skipped: the CUDA backend cannot start"), st["e2e"]
    assert st["sanitize"].startswith("skipped: the CUDA backend cannot start"), st["sanitize"]
    results = os.listdir(tmp_path / "results")
    assert any(f.endswith("nvidia-h200.md") for f in results), results


def test_a_hung_stage_is_cut_with_its_log(tmp_path):
    need_cuda_build()
    bins = tmp_path / "bins"
    (bins / "tests").mkdir(parents=True)
    for exe in ("easel", "bench_ops"):
        os.symlink(os.path.join(BUILD, exe), bins / exe)
    hang = bins / "tests" / "test_ops_gpu"
    hang.write_text("#!/bin/sh\necho 'op tests: started'\nexec sleep 1000\n")
    hang.chmod(hang.stat().st_mode | stat.S_IEXEC)
    p, st = run(tmp_path, extra_env={"GPU_CHECK_MAX_ops": "3"}, bin_dir=str(bins))
    assert p.returncode == 1
    assert st["ops"] == "FAIL: ran past its 3s (hung?)", st["ops"]
    assert "op tests: started" in (tmp_path / "out" / "3-ops.log").read_text()


def test_a_short_budget_skips_stages(tmp_path):
    need_cuda_build()
    p, st = run(tmp_path, extra_env={"GPU_CHECK_BUDGET": "60"})
    assert p.returncode == 0, p.stderr[-2000:]
    assert st["versions"] == "pass"
    assert st["ops"].startswith("skipped: too little time left"), st["ops"]


def test_carry_runs_in_a_clean_root(tmp_path):
    need_cuda_build()
    if os.geteuid() != 0 or not shutil.which("chroot"):
        pytest.skip("skipped: the clean-root check needs root and chroot")
    env = dict(os.environ, GPU_CARRY_BUILD=BUILD, GPU_CARRY_OUT=str(tmp_path / "carry"),
               GPU_CARRY_REF_STEPS="0", GPU_CARRY_XZ="0", GPU_CARRY_NO_BUILD="1")
    p = subprocess.run(["bash", os.path.join(ROOT, "tools", "gpu_check", "carry.sh")], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "clean root: easel, test_ops_gpu, bench_ops load; a tiny model renders" in p.stderr
    size = (tmp_path / "carry" / "carry.tar.xz").stat().st_size
    assert size < 48 << 20, f"the carry is {size >> 20} MiB: too big for the device tool's 64 MiB"
    manifest = (tmp_path / "carry" / "manifest.txt").read_text()
    assert "bin/easel" in manifest and "lib/libopenblas" in manifest
