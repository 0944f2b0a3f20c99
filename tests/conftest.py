"""Test set-up shared by every test.

Firmware tests (tests/firmware/test_*.py) are collected twice: `name[cpython]` runs the
function here, `name[micropython]` runs it inside the real MicroPython VM (Node +
WebAssembly). Each firmware test module runs once per session in the VM, and its results
are reported to pytest test by test.
"""

import ast
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
from hypothesis import settings as _hypothesis_settings

from host_tools import vm

# Property tests judge results, not speed: on a busy 2-core machine a per-example deadline
# only makes them flaky. Derandomized so a run is repeatable.
_hypothesis_settings.register_profile("v2g", deadline=None, derandomize=True, database=None)
_hypothesis_settings.load_profile("v2g")


def _micropython_standin():
    """The firmware tests call micropython.heap_lock() around code that must not allocate;
    under CPython there is no such check, so they run against this stand-in. Firmware code
    itself needs no `micropython` module on CPython (const() falls back in each module)."""
    mod = types.ModuleType("micropython")
    mod.const = lambda value: value
    mod.heap_lock = mod.heap_unlock = lambda: 0
    mod.mem_info = lambda *args: None
    return mod


if sys.implementation.name == "cpython":
    sys.modules.setdefault("micropython", _micropython_standin())

vm.firmware_sys_path("sim")

FIRMWARE_TESTS = Path(__file__).parent / "firmware"

# The in-VM runner: import the module, run each test, print one JSON line per test.
VM_RUNNER = """
import sys, json, io
sys.path.insert(0, '/tests')
names = {names}
try:
    mod = __import__({module!r})
except Exception as e:
    buf = io.StringIO(); sys.print_exception(e, buf)
    for n in names:
        print(json.dumps({{'name': n, 'ok': False, 'err': 'import failed: ' + buf.getvalue()}}))
else:
    for n in names:
        try:
            getattr(mod, n)()
            print(json.dumps({{'name': n, 'ok': True}}))
        except Exception as e:
            buf = io.StringIO(); sys.print_exception(e, buf)
            print(json.dumps({{'name': n, 'ok': False, 'err': buf.getvalue()}}))
"""


def pytest_pycollect_makemodule(module_path, parent):
    if Path(module_path).parent == FIRMWARE_TESTS:
        return FirmwareModule.from_parent(parent, path=Path(module_path))
    return None


class FirmwareModule(pytest.File):
    def collect(self):
        tree = ast.parse(self.path.read_text())
        names = [n.name for n in tree.body
                 if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]
        self.test_names = names
        self._vm_results = None
        for name in names:
            for interp in ("cpython", "micropython"):
                yield FirmwareItem.from_parent(self, name="{}[{}]".format(name, interp),
                                               func_name=name, interp=interp)

    def vm_results(self):
        if self._vm_results is None:
            code = VM_RUNNER.format(names=repr(self.test_names), module=self.path.stem)
            mounts = vm.firmware_mounts("sim", extra=[(FIRMWARE_TESTS, "/tests")])
            try:
                out = vm.run_micropython(code, mounts=mounts, timeout=600)
                self._vm_results = {}
                for line in out.splitlines():
                    if line.startswith("{") and '"name"' in line:
                        rec = json.loads(line)
                        self._vm_results[rec["name"]] = rec
            except (vm.VmError, vm.VmMissing, subprocess.TimeoutExpired) as e:
                self._vm_results = {n: {"ok": False, "err": "VM run failed: {}".format(e)}
                                    for n in self.test_names}
        return self._vm_results


class FirmwareItem(pytest.Item):
    def __init__(self, *, func_name, interp, **kw):
        super().__init__(**kw)
        self.func_name = func_name
        self.interp = interp
        self.add_marker(getattr(pytest.mark, interp))

    def runtest(self):
        if self.interp == "cpython":
            import importlib
            module = importlib.import_module(self.parent.path.stem)
            getattr(module, self.func_name)()
        else:
            rec = self.parent.vm_results().get(self.func_name)
            if rec is None:
                raise FirmwareTestFailure("no result from the MicroPython VM (did the run crash?)")
            if not rec["ok"]:
                raise FirmwareTestFailure(rec["err"])

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, FirmwareTestFailure):
            return "MicroPython VM:\n" + str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, None, self.name


class FirmwareTestFailure(Exception):
    pass


# The modules that take minutes (real-time sessions, updates, bench runs, simulations), longest
# first as measured in a whole run. In a parallel run (`make test`: pytest-xdist, one module per
# worker, modules handed out in collection order with --no-loadscope-reorder) they go first, so
# that no worker is left running one of them alone at the end. Only the order changes; a plain run keeps file order.
LONG_MODULES = ("test_fota.py", "test_romfs_ab.py", "test_secc.py", "test_grid_sim.py", "test_bench.py",
                "test_flash.py", "test_bridge_ocpp.py", "test_sim.py", "test_vboard_station.py",
                "test_history.py", "test_board_budget.py", "test_bridge_local_link.py")


def pytest_collection_modifyitems(config, items):
    if not hasattr(config, "workerinput"):
        return

    def rank(item):
        name = item.path.name
        return LONG_MODULES.index(name) if name in LONG_MODULES else len(LONG_MODULES)
    items.sort(key=rank)        # stable: the tests of a module keep their order


def pytest_configure(config):
    config.addinivalue_line("markers", "cpython: firmware test run under CPython")
    config.addinivalue_line("markers", "micropython: firmware test run in the MicroPython VM")
    config.addinivalue_line("markers", "serial: a test that times the code under test in real time, "
                            "so it must have the CPU when it asks for it; `make test` runs these one "
                            "at a time, beside the parallel run at a higher priority where it may "
                            "(nice -10), else after it")
    if str(FIRMWARE_TESTS) not in sys.path:
        sys.path.insert(0, str(FIRMWARE_TESTS))
