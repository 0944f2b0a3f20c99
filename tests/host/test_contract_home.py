"""The contract between host and controller has one home, firmware/core: the host tools
import it (as `core`) instead of keeping their own copies."""

import ast
import subprocess
import sys
from pathlib import Path

from core import can_msgs as core_can
from core import link as core_link
from core import manifest as core_manifest
from host_tools import bench, tree
from host_tools import link as hlink
from signing import bundle

ROOT = Path(__file__).resolve().parents[2]

# Functions the host once kept beside the controller's own.
COPIES = {"cobs_encode", "cobs_decode", "encode_into", "decode_into", "checksum", "ticks_diff",
          "_fields_ok", "_check_fields", "check_component_name", "check_version", "_manifest_fail",
          "_age", "crc16"}


def _defs(folder):
    for path in sorted((ROOT / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                yield path.relative_to(ROOT).as_posix(), node.name


def test_host_tools_define_no_copy_of_the_contract():
    found = [(p, n) for folder in ("host_tools", "signing") for p, n in _defs(folder) if n in COPIES]
    assert found == []


def test_host_uses_the_controllers_definitions():
    assert hlink.check is core_link.check
    assert (hlink.VERSION, hlink.MAX_FRAME, hlink.STAT_NAMES) == (
        core_link.VERSION, core_link.MAX_FRAME, core_link.STAT_NAMES)
    assert isinstance(hlink.Deframer()._rx, core_link.Link)
    assert bench.checksum is core_can.checksum
    assert bundle.MANIFEST_KEYS is core_manifest._KEYS
    assert core_link.__file__ == str(tree.CORE / "link.py")


def _tick_masks(path):
    """Lines that mask with 2**30 - 1 by hand (wrapping-ticks arithmetic)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitAnd):
            for side in (node.left, node.right):
                if (isinstance(side, ast.Constant) and side.value == 0x3FFFFFFF) or (
                        isinstance(side, ast.Name) and side.id.endswith("TICKS_MASK")):
                    out.append("{}:{}".format(path.relative_to(ROOT).as_posix(), node.lineno))
    return out


def test_wrapping_ticks_only_in_core_ticks():
    # core/grid.py keeps its own elapsed-time clamp for now (docs/architecture.md)
    skip = {"ticks.py", "grid.py"}
    found = []
    for path in sorted((ROOT / "firmware").rglob("*.py")):
        if path.name not in skip:
            found += _tick_masks(path)
    assert found == []


def test_core_imports_on_plain_cpython_without_a_shim(tmp_path):
    # a fresh interpreter outside the checkout: `core` comes from the firmware tree,
    # needs no `micropython` module, and brings no other firmware name along
    code = ("import importlib.util, sys\n"
            "import host_tools\n"
            "from core import controller, link, manifest, can_msgs, config, ticks\n"
            "assert 'micropython' not in sys.modules\n"
            "assert importlib.util.find_spec('app') is None\n"
            "assert importlib.util.find_spec('board') is None\n"
            "print(link.__file__)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(tree.CORE / "link.py")
