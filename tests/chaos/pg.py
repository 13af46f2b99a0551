"""A real, throwaway PostgreSQL server for the multi-node tests and tools
(tools/pgtmp.sh does the work: initdb in a temp dir, a unix socket there, no
TCP; as the postgres user when run as root). Standard library only."""
import os
import shutil
import subprocess
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "tools", "pgtmp.sh")


def unavailable(exe=None):
    """None when tests can run against PostgreSQL, else why not (the skip reason)."""
    r = subprocess.run([SCRIPT, "bin"], capture_output=True, text=True)
    if r.returncode != 0:
        return "no PostgreSQL (initdb not installed; tools/deps.sh installs it)"
    if exe:
        probe = tempfile.mkdtemp(prefix="easel-pgprobe-")
        r = subprocess.run([exe, "serve", "--store", "postgresql:///x?host=/nonexistent",
                            "--store-wait", "0", "--port", "0", "--data-dir", probe],
                           capture_output=True, text=True, timeout=60)
        shutil.rmtree(probe, ignore_errors=True)
        if "built without PostgreSQL" in r.stdout + r.stderr:
            return "no PostgreSQL: this easel was built without libpq"
    return None


def required():
    """EASEL_REQUIRE_PG=1 (CI, which installs PostgreSQL): a missing server is a
    failure there, not a skip."""
    return os.environ.get("EASEL_REQUIRE_PG", "") not in ("", "0")


def skip_or_fail(why):
    """pytest: skip for why, or fail where PostgreSQL is required."""
    import pytest
    if required():
        pytest.fail(f"PostgreSQL is required here (EASEL_REQUIRE_PG=1): {why}")
    pytest.skip(why)


class PgServer:
    def __init__(self, port=None):
        # short: a unix socket path must fit in 107 bytes
        self.dir = tempfile.mkdtemp(prefix="easel-pg-", dir="/tmp")
        self.port = port
        self.bin = subprocess.run([SCRIPT, "bin"], capture_output=True, text=True,
                                  check=True).stdout.strip()
        self.n_db = 0

    def start(self):
        args = [SCRIPT, "start", self.dir] + ([str(self.port)] if self.port else [])
        subprocess.run(args, check=True, capture_output=True, text=True)
        return self

    def stop(self, mode="fast"):
        """mode "immediate" is a crash of the server (recovery from the WAL at start)."""
        subprocess.run([SCRIPT, "stop", self.dir, mode], check=True, capture_output=True)

    def createdb(self, name=None):
        """A fresh, empty database; returns its URL."""
        if name is None:
            self.n_db += 1
            name = f"t{os.getpid()}_{self.n_db}"
        env = dict(os.environ, PGOPTIONS="-c client_min_messages=warning")
        r = subprocess.run([SCRIPT, "createdb", self.dir, name], check=True,
                           capture_output=True, text=True, env=env)
        return r.stdout.strip()

    def sql(self, url, query):
        """Rows of query (lists of strings) run with psql on the database at url."""
        r = subprocess.run([os.path.join(self.bin, "psql"), "-X", "-q", "-A", "-t", "-F", "\t",
                            "-v", "ON_ERROR_STOP=1", url, "-c", query],
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"psql: {r.stderr.strip()}")
        return [line.split("\t") for line in r.stdout.splitlines() if line]

    def cleanup(self):
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)
