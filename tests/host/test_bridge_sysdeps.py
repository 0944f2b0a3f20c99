"""`make test` installs the system packages the bridge tests need (Mosquitto, Node.js):
tools/system-deps.sh runs on every `make test`, costs nothing when all is present, installs
through apt-get (as root, or with `sudo -n`) where something is missing, and says what to
run when it cannot. The commands it would call are stubs on a PATH of our own here."""

import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "system-deps.sh"
BASH = shutil.which("bash")


def _stub(d, name, body):
    p = d / name
    p.write_text("#!/bin/sh\n" + body + "\n")
    p.chmod(p.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def sandbox(tmp_path):
    """A PATH holding only stubs; apt-get and sudo note their calls in calls.txt."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    calls = tmp_path / "calls.txt"
    calls.write_text("")
    os.symlink(shutil.which("env"), bin_ / "env")
    _stub(bin_, "apt-get", f'echo "apt-get $*" >> {calls}')

    def run(present=("node", "npm", "mosquitto", "mosquitto_passwd", "chromium"), uid=0, sudo=None, apt_fails=False,
            ensurepip=True, postgres=True, java=True):
        # PostgreSQL 15 and its contrib (postgres_fdw) are found by path, not on PATH
        pg_bin, pg_share = tmp_path / "pg" / "bin", tmp_path / "pg" / "share"
        shutil.rmtree(tmp_path / "pg", ignore_errors=True)
        if postgres:
            (pg_share / "extension").mkdir(parents=True)
            (pg_share / "extension" / "postgres_fdw.control").write_text("")
            pg_bin.mkdir(parents=True)
            _stub(pg_bin, "initdb", "exit 0")
        # python3 stands for the interpreter make uses: `-c 'import ensurepip'` works or not
        _stub(bin_, "python3", "exit 0" if ensurepip else "exit 1")
        for name in ("node", "npm", "mosquitto", "mosquitto_passwd", "chromium", "java", "sudo", "id"):
            (bin_ / name).unlink(missing_ok=True)
        for name in present:
            _stub(bin_, name, "exit 0")
        if java:     # the JRE the ISO 15118 codec needs; its own test asks for it missing
            _stub(bin_, "java", "exit 0")
        _stub(bin_, "id", f"echo {uid}")
        if sudo == "nopasswd":
            _stub(bin_, "sudo", f'echo "sudo $*" >> {calls}; [ "$1" = -n ] && shift; '
                                '[ "$1" = true ] && exit 0; exec "$@"')
        elif sudo == "password":
            _stub(bin_, "sudo", 'echo "sudo: a password is required" >&2; exit 1')
        if apt_fails:
            _stub(bin_, "apt-get", f'echo "apt-get $*" >> {calls}; echo "E: no network" >&2; exit 100')
        env = {"PATH": str(bin_), "MOSQUITTO_SBIN": str(tmp_path / "no-such-mosquitto"),
               "CHROMIUM": str(tmp_path / "no-such-chromium"), "V2G_PG_BIN": str(pg_bin),
               "V2G_PG_SHARE": str(pg_share)}
        t0 = time.monotonic()
        p = subprocess.run([BASH, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30)
        return p, calls.read_text().splitlines(), time.monotonic() - t0
    return run


def test_make_test_checks_system_packages_every_time_before_anything_else():
    # a clean make environment: under `make test` the inherited MAKEFLAGS/MAKELEVEL would add
    # "Entering directory" lines to what -n prints
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    out = subprocess.run(["make", "--no-print-directory", "-n", "-W", "requirements.txt", "test"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, env=env).stdout.splitlines()
    assert out[0].endswith("./tools/system-deps.sh")   # phony: runs even with the venv up to date
    assert any("pytest" in line for line in out)
    out = subprocess.run(["make", "--no-print-directory", "-n", "test"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, env=env).stdout
    assert "./tools/system-deps.sh" in out


@pytest.mark.serial      # times the check (< 2 s)
def test_nothing_to_do_when_everything_is_present(sandbox):
    p, calls, took = sandbox(uid=1000)
    assert (p.returncode, p.stdout, p.stderr, calls) == (0, "", "", [])
    assert took < 2.0


def test_root_installs_what_is_missing(sandbox):
    p, calls, _ = sandbox(present=("node", "npm", "chromium"))
    assert p.returncode == 0, p.stderr
    assert calls == ["apt-get update -qq", "apt-get install -y -qq --no-install-recommends mosquitto"]


def test_not_root_uses_sudo_without_a_password(sandbox):
    p, calls, _ = sandbox(present=("mosquitto", "mosquitto_passwd", "chromium"), uid=1000, sudo="nopasswd")
    assert p.returncode == 0, p.stderr
    assert "apt-get install -y -qq --no-install-recommends nodejs npm" in calls
    assert any(c.startswith("sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install") for c in calls)


@pytest.mark.parametrize("sudo", [None, "password"])
def test_not_root_without_usable_sudo_says_what_to_run(sandbox, sudo):
    p, calls, _ = sandbox(present=("node", "npm", "chromium"), uid=1000, sudo=sudo)
    assert p.returncode == 1 and not [c for c in calls if "apt-get" in c]
    assert "missing system packages: mosquitto." in p.stderr
    assert "not root, and sudo is absent or needs a password" in p.stderr
    assert "sudo apt-get install mosquitto" in p.stderr


def test_a_failed_install_is_named(sandbox):
    p, calls, _ = sandbox(present=("node", "npm", "chromium"), apt_fails=True)
    assert p.returncode == 1
    assert "apt-get update failed" in p.stderr and "sudo apt-get install mosquitto" in p.stderr


def test_a_python_without_venv_support_gets_python3_venv(sandbox):
    p, calls, _ = sandbox(ensurepip=False)
    assert p.returncode == 0, p.stderr
    assert calls == ["apt-get update -qq", "apt-get install -y -qq --no-install-recommends python3-venv"]


def test_the_browser_for_the_app_tests_is_debians_chromium_without_recommends(sandbox):
    p, calls, _ = sandbox(present=("node", "npm", "mosquitto", "mosquitto_passwd"))
    assert p.returncode == 0, p.stderr
    assert calls == ["apt-get update -qq", "apt-get install -y -qq --no-install-recommends chromium"]


def test_the_fleet_store_tests_get_postgresql_15_with_contrib(sandbox):
    p, calls, _ = sandbox(postgres=False)
    assert p.returncode == 0, p.stderr
    assert calls == ["apt-get update -qq",
                     "apt-get install -y -qq --no-install-recommends postgresql-15 postgresql-contrib"]


def test_the_iso15118_codec_gets_a_headless_jre(sandbox):
    p, calls, _ = sandbox(java=False)
    assert p.returncode == 0, p.stderr
    assert calls == ["apt-get update -qq",
                     "apt-get install -y -qq --no-install-recommends default-jre-headless"]
