"""Rules for firmware that is frozen into a MicroPython image or run from ROMFS.

Two things that import fine from a filesystem break or slow down once frozen (seen with
MicroPython 1.26-1.28's freezing tool):
- a float constant that is infinite or NaN is written into the generated C as a bare `inf` /
  `nan` (tools/mpy-tool.py prints floats with "%.16g"), which the C compiler rejects: the
  image does not build. mpy-cross folds `math.inf` and `math.nan` into such constants wherever
  they appear (MICROPY_COMP_MODULE_CONST), inside functions too: core/cbor.py's
  `_half_to_float` had them, and mpy-tool.py of MicroPython 1.29 wrote
  `(mp_float_t)inf` and `(mp_float_t)nan` for it;
- a constant tuple of ints became heap integers in the frozen image, so code indexing it
  allocated on every call (pilot.level: 32-96 B per call on the control step).

The rules, checked on every .py under firmware/ and boards/ with `ast`:
1. no float literal (or constant expression of literals) that is inf or NaN and no
   `math.inf`/`math.nan`, anywhere (the compiler makes constants of them), and no module-level
   name bound to float('inf'/'nan'); build such a value inside the function that needs it
   with float('inf') (a call at run time, never a constant);
2. no module-level constant tuple of ints in the modules on the control step's path
   (HOT_PATH): tables there are `bytes`, `array` or `const()` scalars. Module-level tuples
   read only at start-up or when settings change are listed in ALLOWED with the reason;
3. no module-level `bytes(...)` of a literal tuple or list, anywhere: the call builds the
   table in RAM at import, where a bytes literal stays in flash frozen (core/status_led.py's
   tables were built this way: 128 B of RAM).
"""

import ast
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Modules the control step (Station.tick -> Controller.step, the HAL's read/write, the bus
# tasks' per-poll decode) runs code of.
HOT_PATH = (
    "firmware/core/pilot.py", "firmware/core/controller.py", "firmware/core/limits.py",
    "firmware/core/grid.py", "firmware/core/thermal.py", "firmware/core/setpoint.py",
    "firmware/core/ticks.py", "firmware/core/can_msgs.py", "firmware/core/modbus.py",
    "firmware/core/meter_map.py", "firmware/core/link.py", "firmware/core/cobs.py",
    "firmware/app/station.py", "firmware/app/canbus.py", "firmware/app/meter.py",
    "firmware/app/buses.py", "boards/*/hal.py", "boards/*/pins.py",
)

# (file pattern, module-level name): why a tuple of ints is fine there.
ALLOWED = {
    ("boards/*/hal.py", "BOARD_LIMITS"): "the settings' ranges, read when settings are checked",
    ("firmware/core/meter_map.py", "BLOCKS_SDM630"): "register blocks, copied when the meter is set up",
    ("firmware/core/meter_map.py", "BLOCKS_SDM120"): "register blocks, copied when the meter is set up",
    ("firmware/core/meter_map.py", "BLOCKS_SDM630_TWO_STEP"): "register blocks, copied when the meter is set up",
    ("firmware/core/meter_map.py", "BLOCKS_SDM120_TWO_STEP"): "register blocks, copied when the meter is set up",
    ("firmware/core/meter_map.py", "MAP_SDM630"): "read when the meter is set up (MeterReader's plan)",
    ("firmware/core/meter_map.py", "MAP_SDM120"): "read when the meter is set up (MeterReader's plan)",
}


def firmware_sources():
    out = []
    for top in ("firmware", "boards"):
        out += sorted(p for p in (ROOT / top).rglob("*.py") if "__pycache__" not in p.parts)
    return out


def _matches(rel, pattern):
    return Path(rel).match(pattern)


def _const_names(tree):
    """Module-level names bound to const(int): mpy-cross folds them into constants."""
    names = set()
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name) and isinstance(node.value, ast.Call)
                and getattr(node.value.func, "id", None) == "const"):
            names.add(node.targets[0].id)
    return names


def _fold(node):
    """The value of a constant expression of literals (what the compiler folds), else None."""
    try:
        if any(isinstance(n, (ast.Name, ast.Call, ast.Attribute, ast.Subscript)) for n in ast.walk(node)):
            return None
        return ast.literal_eval(node) if isinstance(node, ast.Constant) else eval(  # noqa: S307
            compile(ast.Expression(node), "<fold>", "eval"), {"__builtins__": {}})
    except Exception:  # noqa: BLE001 - not a foldable constant
        return None


def _is_bad_float(v):
    return isinstance(v, float) and (math.isinf(v) or math.isnan(v))


def _bad_float_call(node):
    """float('inf'), float('-nan') ..."""
    if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "float" and node.args:
        arg = node.args[0]
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            return arg.value.strip().lower().lstrip("+-") in ("inf", "infinity", "nan")
    return False


def _math_constant(node):
    """math.inf, math.nan: folded into constants by mpy-cross."""
    return (isinstance(node, ast.Attribute) and node.attr in ("inf", "nan")
            and getattr(node.value, "id", None) == "math")


def inf_nan_problems(path, rel):
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Constant, ast.BinOp, ast.UnaryOp)) and _is_bad_float(_fold(node)):
            out.append("{}:{}: float constant {} (frozen, it becomes a bare inf/nan in C)".format(
                rel, node.lineno, ast.unparse(node)))
        elif _math_constant(node):
            out.append("{}:{}: {} is folded into a float constant (frozen, a bare inf/nan in C); "
                       "use float('{}') inside the function".format(rel, node.lineno, ast.unparse(node), node.attr))
    for stmt in tree.body:
        if isinstance(stmt, (ast.Assign, ast.AnnAssign)) and stmt.value is not None:
            for node in ast.walk(stmt.value):
                if _bad_float_call(node):
                    out.append("{}:{}: module-level {} (build it inside the function that needs "
                               "it)".format(rel, node.lineno, ast.unparse(node)))
    return sorted(set(out))


def _int_tuple(node, consts):
    def is_int(e):
        if isinstance(e, ast.Name):
            return e.id in consts
        v = _fold(e)
        return type(v) is int
    return isinstance(node, ast.Tuple) and node.elts and all(
        is_int(e) or _int_tuple(e, consts) for e in node.elts)


def tuple_problems(path, rel):
    if not any(_matches(rel, pat) for pat in HOT_PATH):
        return []
    tree = ast.parse(path.read_text(), str(path))
    consts = _const_names(tree)
    out = []
    for stmt in tree.body:
        if not isinstance(stmt, (ast.Assign, ast.AnnAssign)) or stmt.value is None:
            continue
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
        names = [t.id for t in targets if isinstance(t, ast.Name)]
        if any(_matches(rel, pat) and name in names for pat, name in ALLOWED):
            continue
        for node in ast.walk(stmt.value):
            if _int_tuple(node, consts):
                out.append("{}:{}: module-level constant tuple of ints {} on the control step's "
                           "path (use bytes, array or const() scalars)".format(
                               rel, node.lineno, ast.unparse(node)[:60]))
                break
    return out


def built_bytes_problems(path, rel):
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for stmt in tree.body:
        if not isinstance(stmt, (ast.Assign, ast.AnnAssign)) or stmt.value is None:
            continue
        for node in ast.walk(stmt.value):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "bytes"
                    and len(node.args) == 1 and isinstance(node.args[0], (ast.Tuple, ast.List))):
                out.append("{}:{}: module-level {} is built in RAM at import (write a bytes "
                           "literal)".format(rel, node.lineno, ast.unparse(node)[:60]))
    return out


def test_no_inf_or_nan_constants():
    problems = []
    for path in firmware_sources():
        problems += inf_nan_problems(path, path.relative_to(ROOT).as_posix())
    assert problems == []


def test_no_constant_int_tuples_on_the_hot_path():
    problems = []
    for path in firmware_sources():
        problems += tuple_problems(path, path.relative_to(ROOT).as_posix())
    assert problems == []


def test_no_bytes_table_built_at_import():
    problems = []
    for path in firmware_sources():
        problems += built_bytes_problems(path, path.relative_to(ROOT).as_posix())
    assert problems == []


@pytest.mark.parametrize("src,bad", [
    ("T = bytes((1, 2))\n", True),
    ("from micropython import const\nA = const(1)\nT = bytes([A, 2])\n", True),
    ("T = b'\\x01\\x02'\n", False),
    ("T = bytes(16)\n", False),               # a size, not a table
    ("def f():\n    return bytes((1, 2))\n", False),
])
def test_the_built_bytes_rule_sees(tmp_path, src, bad):
    p = tmp_path / "m.py"
    p.write_text(src)
    assert bool(built_bytes_problems(p, "m.py")) is bad


@pytest.mark.parametrize("src,bad", [
    ("X = 1e999\n", True),
    ("def f():\n    return -1e999 * 0\n", True),
    ("X = float('inf')\n", True),
    ("import math\nNAN = math.nan\n", True),
    ("import math\ndef f(x):\n    return math.inf if x else 0.0\n", True),   # folded all the same
    ("def f(x):\n    return float('inf') if x else float('nan')\n", False),    # built when called
    ("X = 1.5e300\n", False),
])
def test_the_inf_nan_rule_sees(tmp_path, src, bad):
    p = tmp_path / "m.py"
    p.write_text(src)
    assert bool(inf_nan_problems(p, "m.py")) is bad


@pytest.mark.parametrize("src,bad", [
    ("T = (12000, 9000, -12000)\n", True),
    ("from micropython import const\nA = const(1)\nT = (A, 2)\n", True),
    ("T = ((1, -2), (3, 4))\n", True),
    ("D = {'k': (6, 32)}\n", True),
    ("T = ('A', 'B')\n", False),
    ("T = bytes((1, 2))\n", True),            # the tuple literal is still a constant
    ("T = b'\\x01\\x02'\n", False),
    ("from array import array\nT = array('h', [1, -2])\n", False),
    ("def f():\n    return (1, 2)\n", False),  # module level only
])
def test_the_tuple_rule_sees(tmp_path, src, bad):
    p = tmp_path / "pilot.py"
    p.write_text(src)
    assert bool(tuple_problems(p, "firmware/core/pilot.py")) is bad
