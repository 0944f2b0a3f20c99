"""The fleet history store on loopback for the tests and the bench: throwaway PostgreSQL
instances, a plain Mosquitto per zone, `v2g history ingest` workers, a station publisher.

Debian's PostgreSQL 15 binaries (postgresql-15, postgresql-contrib for postgres_fdw); each
instance gets its own data directory, port and socket directory. The server refuses to run as
root, so as root the instance runs as the `postgres` system user.
"""

import json
import os
import pwd
import shutil
import socket
import signal
import subprocess
import sys
import time
from pathlib import Path

PG_BIN = Path(os.environ.get("V2G_PG_BIN", "/usr/lib/postgresql/15/bin"))

# small-machine settings: several instances share two cores. Durability as in production:
# a worker acknowledges a message once its rows are committed, so a commit must survive
# a shard being stopped at once (synchronous_commit on, the default)
CONF = """
listen_addresses = '127.0.0.1'
max_connections = 60
shared_buffers = 64MB
work_mem = 16MB
jit = off
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
        r = subprocess.run([str(PG_BIN / args[0])] + args[1:], preexec_fn=drop, capture_output=True, text=True,
                           cwd="/")
        if check and r.returncode:
            log = self.log.read_text()[-2000:] if self.log.exists() else "(no log)"
            raise RuntimeError(f"{args[0]} failed ({r.returncode}): {r.stdout}{r.stderr}\n{log}")
        return r

    def init(self):
        if (self.data / "PG_VERSION").exists():
            return self
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir.parent, 0o755)
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
        try:
            self._run(["pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "30", "start"])
        except RuntimeError as e:        # another process took the port meanwhile: once more on a new one
            print(f"postgres {self.dir.name} did not start, retrying on a new port: {e}")
            self.port = free_port()
            with open(self.data / "postgresql.conf", "a") as f:
                f.write(f"port = {self.port}\n")
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


# ---------------------------------------------------------------- broker, fleet, workers

ROOT = Path(__file__).resolve().parents[2]
MOSQUITTO_PLAIN = """
listener {port} 127.0.0.1
allow_anonymous true
persistence true
persistence_location {dir}/
autosave_interval 1
max_queued_messages 1000000
max_inflight_messages 0
set_tcp_nodelay true
"""


def mosquitto_bin():
    for p in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if p and os.access(p, os.X_OK):
            return p
    raise RuntimeError("mosquitto is not installed: run tools/system-deps.sh")


class PlainBroker:
    """Mosquitto on loopback without TLS or accounts (the shipped TLS/ACL set-up is tested with
    the bridge and the API); persistent, so sessions and queued messages survive a restart.
    A zone's broker in the two-zone tests."""

    def __init__(self, root, name="broker", port=None):
        self.dir = Path(root) / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.conf = self.dir / "mosquitto.conf"
        text = MOSQUITTO_PLAIN.format(port=self.port, dir=self.dir)
        if os.geteuid() == 0:
            # as root mosquitto would switch to its own user, which cannot write its store here
            text = "user root\n" + text
        self.conf.write_text(text)
        self.proc = None
        self.url = f"mqtt://127.0.0.1:{self.port}"

    def start(self):
        self.log = open(self.dir / "mosquitto.log", "a")
        self.proc = subprocess.Popen([mosquitto_bin(), "-c", str(self.conf)], stdout=self.log,
                                     stderr=subprocess.STDOUT, cwd=self.dir)
        end = time.monotonic() + 10
        while time.monotonic() < end:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port}")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()          # SIGTERM: mosquitto saves its sessions first
            self.proc.wait(10)
        self.proc = None


class LocalFleet:
    """A coordinator and `shards` shard instances, migrated, with `buckets` buckets."""

    def __init__(self, root, shards=3, buckets=None, retention_days=2):
        self.root = Path(root)
        self.coord = LocalPg(self.root, "coord").init().start()
        self.shards = [LocalPg(self.root, f"shard{i}").init().start() for i in range(shards)]
        from host_tools.history import pg
        pg.migrate(self.coord.dsn, [s.dsn for s in self.shards], buckets=buckets,
                   settings={"retention_days": retention_days}, log=lambda m: None)
        self.dsn = self.coord.dsn

    def close(self):
        for p in [self.coord] + self.shards:
            p.stop("immediate")


def v2g(*args):
    return [str(Path(sys.executable).with_name("v2g")), *args]


class IngestProc:
    """`v2g history ingest` as a process, its counters in a JSON file."""

    def __init__(self, root, store, mqtt_url, wid, *extra):
        self.root = Path(root)
        self.wid = wid
        self.stats_file = self.root / f"{wid}.stats.json"
        self.args = v2g("history", "ingest", "--store", store, "--mqtt", mqtt_url, "--id", wid,
                        "--stats-file", str(self.stats_file), *extra)
        self.proc = None
        self.start()

    def start(self):
        if self.stats_file.exists():
            self.stats_file.unlink()         # counters are this process's
        self.err = open(self.root / f"{self.wid}.log", "a")
        self.proc = subprocess.Popen(self.args, stdout=self.err, stderr=subprocess.STDOUT, cwd=ROOT)
        return self

    def wait_subscribed(self, timeout=30):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.stats().get("subscribed"):
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"ingest worker {self.wid} did not subscribe: {self.log_text()[-2000:]}")

    def stats(self):
        try:
            return json.loads(self.stats_file.read_text())
        except (OSError, ValueError):
            return {}

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        self.err.close()

    def log_text(self):
        return (self.root / f"{self.wid}.log").read_text()


class Publisher:
    """Stations publishing telemetry batches as the bridge does ({"ts": publish ms, "samples":
    [... {"t_ms": controller ticks} ...]}), QoS 1 so the broker keeps them for the workers."""

    def __init__(self, mqtt_url):
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
        u = mqtt_url.rsplit(":", 1)
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.c.max_inflight_messages_set(1000)
        self.c.max_queued_messages_set(0)
        self.c.connect("127.0.0.1", int(u[1]))
        self.c.loop_start()

    def batch(self, station, ts, first_tick, n=5, step_ms=1000, cp="C", w=-7000, e_out0=0):
        doc = {"ts": ts, "samples": [{"t_ms": first_tick + i * step_ms, "cp": cp, "mode": "v2g", "soc_pm": 700 - i,
                                      "w": w, "ma": 10000, "mv": 230000, "mhz": 50000, "e_in_wh": 0,
                                      "e_out_wh": e_out0 + i * 2, "dis_cap_wh": 30000} for i in range(n)]}
        return self.raw(f"v2g/{station}/telemetry", json.dumps(doc, separators=(",", ":")))

    def raw(self, topic, payload):
        return self.c.publish(topic, payload, qos=1)

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()
