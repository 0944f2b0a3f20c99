"""Shared pieces of the bridge tests: free ports, a self-made CA, a real Mosquitto broker
started from deploy/mosquitto/v2g.conf, the bridge as a subprocess, the plant port."""

import datetime
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parents[2]
BROKER_CONF = ROOT / "deploy" / "mosquitto" / "v2g.conf"
BROKER_ACL = ROOT / "deploy" / "mosquitto" / "v2g.acl"
ACL_EXAMPLE_USER, ACL_EXAMPLE_STATION = "app-CS-0001", "CS-0001"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- certificates

def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(d, name="v2g-test-ca"):
    d = Path(d)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    (d / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert, d / f"{name}.pem"


def make_leaf(d, ca_key, ca_cert, cn, server=True):
    """(cert path, key path) of a certificate for 127.0.0.1/localhost signed by the CA."""
    d = Path(d)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_cert.subject)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5))
         .not_valid_after(now + datetime.timedelta(days=1)))
    if server:
        import ipaddress
        b = b.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    cert = b.sign(ca_key, hashes.SHA256())
    cp, kp = d / f"{cn}.pem", d / f"{cn}.key"
    cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    kp.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    os.chmod(kp, 0o600)
    return cp, kp


# ---------------------------------------------------------------- mosquitto

def mosquitto_binary():
    for p in (shutil.which("mosquitto"), "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if p and os.access(p, os.X_OK):
            return p
    pytest.fail("mosquitto is not installed: run tools/system-deps.sh (as root) or apt-get install mosquitto")


def acl_for(apps):
    """The shipped ACL with its example app block repeated for each (user, station) of
    apps; the bridge's block as shipped."""
    blocks, cur = [], []
    for line in BROKER_ACL.read_text().splitlines():
        if line.startswith("user "):
            cur = [line]
            blocks.append(cur)
        elif cur and line.startswith("topic "):
            cur.append(line)
    template = [b for b in blocks if b[0] == "user " + ACL_EXAMPLE_USER]
    assert len(template) == 1, "the shipped ACL lost its example app block"
    out = [b for b in blocks if b is not template[0]]
    for user, station in apps.items():
        out.append([x.replace(ACL_EXAMPLE_USER, user).replace(ACL_EXAMPLE_STATION, station)
                    for x in template[0]])
    return "\n\n".join("\n".join(b) for b in out) + "\n"


class Broker:
    """Mosquitto with the shipped configuration and ACL; only the port, file paths, the
    persistence store and the app users' stations are changed for a test run on loopback."""

    def __init__(self, tmp, ca_key, ca_cert, ca_path, users, apps=None, acl_extra=""):
        """users: name -> password; apps: app user -> the station it may reach; acl_extra:
        more ACL blocks (e.g. a second API worker's account)."""
        tmp = Path(tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        cert, key = make_leaf(tmp, ca_key, ca_cert, "broker")
        passwd = tmp / "v2g.passwd"
        passwd.write_text("")
        for user, pw in users.items():
            subprocess.run([shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd", "-b", str(passwd),
                            user, pw], check=True, capture_output=True)
        os.chmod(passwd, 0o600)
        acl = tmp / "v2g.acl"
        self.acl_text = acl_for(apps or {}) + acl_extra
        acl.write_text(self.acl_text)
        os.chmod(acl, 0o600)
        conf = []
        for line in BROKER_CONF.read_text().splitlines():
            key_ = line.split(" ", 1)[0]
            if key_ == "listener":
                line = f"listener {self.port} 127.0.0.1"
            elif key_ == "cafile":
                line = f"cafile {ca_path}"
            elif key_ == "certfile":
                line = f"certfile {cert}"
            elif key_ == "keyfile":
                line = f"keyfile {key}"
            elif key_ == "password_file":
                line = f"password_file {passwd}"
            elif key_ == "acl_file":
                line = f"acl_file {acl}"
            elif key_ in ("persistence", "persistence_location"):
                continue
            conf.append(line)
        if os.geteuid() == 0:
            # as root mosquitto would switch to its own user, which cannot read the test's files
            conf.insert(0, "user root")
        self.conf_text = "\n".join(conf) + "\n"
        conf_path = tmp / "mosquitto.conf"
        conf_path.write_text(self.conf_text)
        self.log = open(tmp / "mosquitto.log", "w")
        self.proc = subprocess.Popen([mosquitto_binary(), "-c", str(conf_path)], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        end = time.monotonic() + 10
        while time.monotonic() < end:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("mosquitto did not start: " + (tmp / "mosquitto.log").read_text())

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


# ---------------------------------------------------------------- bridge process

class BridgeProc:
    def __init__(self, link, csms_url, station, config_dir, log_dir, state_dir, *extra):
        # link None: a site gateway, whose --site file names the links and stations
        one = [] if link is None else ["--link", link, "--station-id", station]
        self.args = [sys.executable, "-m", "host_tools.commands.bridge", *one, "--csms", csms_url,
                     "--config-dir", str(config_dir), "--log-dir", str(log_dir),
                     "--state-dir", str(state_dir), *extra]
        self.log_dir = Path(log_dir)
        self.err = open(Path(log_dir).parent / f"bridge-{station}.stderr", "a")
        self.proc = subprocess.Popen(self.args, stdout=self.err, stderr=subprocess.STDOUT, cwd=ROOT)

    def log_text(self):
        p = self.log_dir / "central_system.log"
        return p.read_text() if p.exists() else ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


class Plant:
    def __init__(self, path):
        self.f = open(path, "r+b", buffering=0)

    def do(self, what, **kw):
        self.f.write((json.dumps({"do": what, **kw}) + "\n").encode())
        reply = json.loads(self.f.readline())
        assert reply["ok"], reply
        return reply

    def close(self):
        self.f.close()


def wait_until(fn, timeout=45, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = fn()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached within {timeout} s")


def stop_all(started):
    """Call each stop function of a rig, the last started first; one that fails is printed
    and the rest are still stopped (a broker or board left running would outlive the test)."""
    for stop in reversed(started):
        try:
            stop()
        except Exception as e:  # keep stopping the rest
            print("cleanup:", e)
