"""Regenerates every test fixture: runs each tools/fixtures_*.py in turn (with
the tools venv's python, .venv-tools, when this is started from elsewhere).
Some need a built easel binary (fixtures_pipeline.py: $EASEL_BIN or build*/easel).
    usage: python tools/make_fixtures.py [name ...]   (e.g. names pipeline)
"""
import glob
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    py = os.path.join(ROOT, ".venv-tools", "bin", "python")
    if not os.path.exists(py):
        py = sys.executable
    scripts = sorted(glob.glob(os.path.join(ROOT, "tools", "fixtures_*.py")))
    if len(sys.argv) > 1:
        scripts = [s for s in scripts if os.path.basename(s)[9:-3] in sys.argv[1:]]
    failed = []
    for s in scripts:
        t0 = time.time()
        print(f"== {os.path.basename(s)}", flush=True)
        rc = subprocess.call([py, s], cwd=ROOT)
        print(f"== {os.path.basename(s)}: {'ok' if rc == 0 else f'FAILED ({rc})'} "
              f"in {time.time() - t0:.1f}s", flush=True)
        if rc:
            failed.append(os.path.basename(s))
    if failed:
        sys.exit("failed: " + ", ".join(failed))


if __name__ == "__main__":
    main()
