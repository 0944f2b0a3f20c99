"""`pip install .` gives a `v2g` that works outside the checkout.

The wheel is built from this tree and installed, without dependencies, into a fresh venv;
the third-party packages come from the development venv through a .pth line (its own .pth
files, among them the editable install of this checkout, are not read that way). Every
command runs from a folder outside the checkout, with no PYTHONPATH.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "scenarios" / "demo.toml"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("install")
    # built from a copy: no build/ folder of an earlier build, and nothing written to the checkout
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "node_modules", "build", "state", "__pycache__", "*.egg-info", ".hypothesis"))
    wheels = tmp / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(wheels), str(src)], check=True, capture_output=True, timeout=300)
    wheel = next(wheels.glob("v2g_controller-*.whl"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    "--no-index", str(wheel)], check=True, capture_output=True, timeout=300)
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "dev-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "V2G_NODE_MODULES")}
    return {"bin": venv / "bin", "cwd": elsewhere, "env": env, "purelib": Path(purelib)}


def run(inst, *args, env=None, timeout=120):
    return subprocess.run([str(inst["bin"] / args[0]), *args[1:]], cwd=inst["cwd"], capture_output=True,
                          text=True, timeout=timeout, env=dict(inst["env"], **(env or {})))


def test_the_installed_package_carries_the_controllers_code(installed):
    out = run(installed, "python", "-c",
              "import host_tools.tree as t, core.link, host_tools.vm as vm\n"
              "print(t.CHECKOUT, t.FIRMWARE, core.link.__file__, vm.known_boards())")
    assert out.returncode == 0, out.stderr
    checkout, firmware, link_file, boards = out.stdout.split(" ", 3)
    shipped = installed["purelib"] / "host_tools" / "_tree"
    assert checkout == "None"
    assert firmware == str(shipped / "firmware")
    assert link_file == str(shipped / "firmware" / "core" / "link.py")
    assert "'sim'" in boards and "'pyboard'" in boards
    for rel in ("firmware/main.py", "firmware/boot.py", "firmware/app/station.py", "firmware/can/v2g.dbc",
                "boards/sim/board.json", "boards/pyboard/hal.py"):
        assert (shipped / rel).is_file(), rel
    assert (installed["purelib"] / "host_tools" / "vm" / "mpvm.mjs").is_file()
    assert not (installed["purelib"] / "core").exists()       # no top-level `core` in site-packages


def test_help_and_a_simulation_from_another_folder(installed):
    out = run(installed, "v2g", "--help")
    assert out.returncode == 0 and "sim" in out.stdout and "flash" in out.stdout, out.stderr
    out = run(installed, "v2g", "sim", str(DEMO), "--vm", "cpython", "--out", "demo.jsonl")
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in (installed["cwd"] / "demo.jsonl").read_text().splitlines()]
    assert records[0]["msg"] == "controller boot #1"
    assert any(r.get("kind") == "tick" and r.get("contactor") for r in records)


def test_the_vm_package_is_named_by_an_environment_variable(installed):
    out = run(installed, "v2g", "sim", str(DEMO), "--vm", "micropython", "--out", "vm.jsonl")
    assert out.returncode != 0
    assert "V2G_NODE_MODULES" in out.stdout + out.stderr
    out = run(installed, "v2g", "sim", str(DEMO), "--vm", "micropython", "--out", "vm.jsonl",
              env={"V2G_NODE_MODULES": str(installed["cwd"])})
    assert out.returncode != 0
    assert "holds no @micropython/micropython-webassembly-pyscript" in out.stdout + out.stderr


def test_flash_dry_run_against_a_virtual_board(installed):
    env = dict(installed["env"], V2G_NODE_MODULES=str(ROOT / "node_modules"))
    board = subprocess.Popen([str(installed["bin"] / "v2g"), "vboard", "--state", "board", "--blank",
                              "--repl-port", "0"], cwd=installed["cwd"], env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = board.stdout.readline()
        assert line, board.stderr.read()
        port = json.loads(line)["repl_socket"]
        out = run(installed, "v2g", "flash", "--port", port, "--board", "sim", "--dry-run",
                  env={"V2G_NODE_MODULES": env["V2G_NODE_MODULES"]})
        assert out.returncode == 0, out.stdout + out.stderr
        assert "would copy core/link.mpy (new" in out.stdout
        assert "would copy board/hal.mpy (new" in out.stdout
        assert "dry run: nothing written" in out.stdout
    finally:
        board.send_signal(signal.SIGTERM)
        board.wait(20)
