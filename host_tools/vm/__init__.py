"""Running the firmware on a host: in the real MicroPython VM (Node + WebAssembly) or in CPython.

Both runners see the same module layout as a flashed controller:

    firmware/*        -> /flash/...        (core/, app/, main.py, boot.py)
    boards/<board>/*  -> /flash/board/...  (the package `board`)

`run_micropython()` starts `node mpvm.mjs run` and yields the lines the code prints;
`firmware_sys_path()` gives CPython the same imports (used by tests and `--vm cpython`).
"""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

from host_tools import tree

ROOT = tree.ROOT            # the folder holding firmware/ and boards/ (checkout, or the installed copy)
FIRMWARE = tree.FIRMWARE
BOARDS = tree.BOARDS
MPVM = Path(__file__).with_name("mpvm.mjs")
VM_PACKAGE_NAME = "@micropython/micropython-webassembly-pyscript"
NODE_MODULES_ENV = "V2G_NODE_MODULES"


class VmMissing(RuntimeError):
    """Node or the npm MicroPython package is not installed; the message says how to install it."""


class VmError(RuntimeError):
    """Code inside the VM raised; the message is its traceback."""


def node_modules():
    """The node_modules folder that holds the MicroPython VM package.

    $V2G_NODE_MODULES when set (an installed v2g: the package is not part of the wheel),
    else the checkout's own node_modules. Raises VmMissing saying how to get one."""
    given = os.environ.get(NODE_MODULES_ENV)
    if given:
        where = Path(given).expanduser().resolve()
        if not (where / VM_PACKAGE_NAME).is_dir():
            raise VmMissing("{}={} holds no {} (install it there with: npm install {})".format(
                NODE_MODULES_ENV, given, VM_PACKAGE_NAME, VM_PACKAGE_NAME))
        return where
    if tree.CHECKOUT is not None and (tree.CHECKOUT / "node_modules" / VM_PACKAGE_NAME).is_dir():
        return tree.CHECKOUT / "node_modules"
    if tree.CHECKOUT is not None:
        raise VmMissing("the MicroPython VM package is not installed (run: npm ci   in {})".format(
            tree.CHECKOUT))
    raise VmMissing("the MicroPython VM package is not installed: run `npm install {}` in a folder "
                    "and set {} to its node_modules".format(VM_PACKAGE_NAME, NODE_MODULES_ENV))


def node_binary():
    node = shutil.which("node")
    if not node:
        raise VmMissing("Node.js is not installed (install it with: apt-get install nodejs npm)")
    node_modules()
    return node


def node_env():
    """Environment for `node mpvm.mjs`: tells it where the VM package is."""
    env = dict(os.environ)
    env[NODE_MODULES_ENV] = str(node_modules())
    return env


def firmware_mounts(board="sim", extra=()):
    """--mount arguments that lay the firmware and one board out as on the controller."""
    mounts = [(FIRMWARE, "/flash"), (BOARDS / board, "/flash/board")]
    mounts.extend(extra)
    return mounts


def vm_command(code, mounts=(), paths=("/flash",), cwd="/flash", heap=None):
    cmd = [node_binary(), str(MPVM), "run"]
    for host, vm in mounts:
        cmd += ["--mount", "{}:{}".format(host, vm)]
    for p in paths:
        cmd += ["--path", p]
    if cwd:
        cmd += ["--cwd", cwd]
    if heap:
        cmd += ["--heap", str(heap)]
    cmd += ["--code", code]
    return cmd


def run_micropython(code, mounts=None, paths=("/flash",), timeout=None, heap=None):
    """Run code in the MicroPython VM; return its stdout as text. Raises VmError on an exception."""
    mounts = firmware_mounts() if mounts is None else mounts
    proc = subprocess.run(vm_command(code, mounts, paths, heap=heap), capture_output=True,
                          text=True, timeout=timeout, env=node_env())
    if proc.returncode != 0:
        raise VmError(tidy_stderr(proc.stderr) or "MicroPython VM exited with {}".format(proc.returncode))
    return proc.stdout


def tidy_stderr(text):
    """Keep what a person can read: Node prints the VM's minified source above a JS error."""
    lines = [ln if len(ln) < 400 else ln[:200] + " ..." for ln in text.strip().splitlines()]
    return "\n".join(lines[-30:])


def stream_micropython(code, mounts=None, paths=("/flash",), heap=None):
    """Start code in the VM and return the Popen; read its stdout line by line."""
    mounts = firmware_mounts() if mounts is None else mounts
    return subprocess.Popen(vm_command(code, mounts, paths, heap=heap), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, bufsize=1, env=node_env())


def known_boards():
    """The boards of this tree: the folders under boards/ with a board.json."""
    return sorted(p.name for p in BOARDS.iterdir() if (p / "board.json").is_file())


def firmware_sys_path(board="sim"):
    """Run the whole firmware under CPython: make `import app...` and `import board` work
    as on the controller (`import core` works in any host process, see host_tools/tree.py)."""
    p = str(FIRMWARE)
    if p not in sys.path:
        sys.path.insert(0, p)
    if "board" not in sys.modules:
        board_dir = BOARDS / board
        init = board_dir / "__init__.py"
        spec = importlib.util.spec_from_file_location(
            "board", init if init.exists() else None,
            submodule_search_locations=[str(board_dir)])
        if spec is not None:
            module = importlib.util.module_from_spec(spec)
            sys.modules["board"] = module
            if init.exists():
                spec.loader.exec_module(module)
