"""Throwaway PostgreSQL instances on loopback, for trials, the tests and the bench.

Debian's PostgreSQL 15 binaries (postgresql-15, postgresql-contrib for postgres_fdw); each
instance gets its own data directory, port and socket directory. The server refuses to run as
root, so as root the instance runs as the `postgres` system user.
"""

import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path

PG_BIN = Path(os.environ.get("V2G_PG_BIN", "/usr/lib/postgresql/15/bin"))

# small-machine settings: several instances share two cores; durability as in production
# except synchronous_commit (a crash may lose the last few hundred ms of acknowledged commits
# on a shard; the ingest workers ack MQTT only after commit, so those are redelivered)
CONF = """
listen_addresses = '127.0.0.1'
max_connections = 60
shared_buffers = 64MB
work_mem = 8MB
synchronous_commit = off
wal_level = minimal
max_wal_senders = 0
fsync = on
max_worker_processes = 8
max_parallel_workers_per_gather = 0
log_min_messages = warning
log_min_duration_statement = -1
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_pg():
    """(preexec_fn, owner uid/gid) to run the server binaries as `postgres` when we are root."""
    if os.geteuid() != 0:
        return None, None
    pw = pwd.getpwnam("postgres")

    def drop():
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)
    return drop, (pw.pw_uid, pw.pw_gid)


class LocalPg:
    def __init__(self, root, name, port=None):
        self.dir = Path(root) / name
        self.data = self.dir / "data"
        self.port = port or free_port()
        self.user = "v2g"
        self.log = self.dir / "server.log"

    @property
    def dsn(self):
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/v2g"

    def _run(self, args, check=True):
        drop, _ = _as_pg()
        return subprocess.run([str(PG_BIN / args[0])] + args[1:], preexec_fn=drop, check=check,
                              capture_output=True, text=True, cwd="/")

    def init(self):
        if (self.data / "PG_VERSION").exists():
            return self
        self.dir.mkdir(parents=True, exist_ok=True)
        _, owner = _as_pg()
        if owner:
            os.chown(self.dir, *owner)
            p = self.dir
            while p != p.parent and p.parent != Path("/"):   # the server must reach its directory
                p = p.parent
                os.chmod(p, os.stat(p).st_mode | 0o011)
        self._run(["initdb", "-D", str(self.data), "-U", self.user, "-A", "trust", "-E", "UTF8",
                   "--locale=C", "--no-sync"])
        with open(self.data / "postgresql.conf", "a") as f:
            f.write(CONF + f"port = {self.port}\nunix_socket_directories = '{self.dir}'\n")
        return self

    def start(self):
        if self.running():
            return self
        self._run(["pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "30", "start"])
        self._created()
        return self

    def _created(self):
        r = subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, "-d", "postgres",
                            "-tAc", "SELECT 1 FROM pg_database WHERE datname='v2g'"], capture_output=True, text=True)
        if r.stdout.strip() != "1":
            subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, "-d", "postgres",
                            "-c", "CREATE DATABASE v2g"], check=True, capture_output=True)

    def stop(self, mode="fast"):
        self._run(["pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop"], check=False)

    def running(self):
        return self._run(["pg_ctl", "-D", str(self.data), "status"], check=False).returncode == 0

    def wait_ready(self, timeout=30):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self._run(["pg_isready", "-h", "127.0.0.1", "-p", str(self.port)], check=False).returncode == 0:
                return True
            time.sleep(0.1)
        return False

    def destroy(self):
        self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


def have_postgres():
    return (PG_BIN / "initdb").exists() and (PG_BIN / "postgres").exists()
