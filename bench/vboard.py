"""Virtual board round trips with the real mpremote: what a developer waits for."""

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "host"))
from vboard_fixture import RunningBoard  # noqa: E402

RUNS = 5


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def rows():
    with tempfile.TemporaryDirectory() as tmp:
        board = RunningBoard(Path(tmp) / "flash")
        try:
            blob = Path(tmp) / "blob.bin"
            blob.write_bytes(os.urandom(50_000))
            exec_s = [timed(lambda: board.mpremote("exec", "print(1+1)")) for _ in range(RUNS)]
            cp_s = [timed(lambda: board.mpremote("fs", "cp", "--force", str(blob), ":blob.bin"))
                    for _ in range(RUNS)]
            back = Path(tmp) / "back.bin"
            get_s = [timed(lambda: board.mpremote("fs", "cp", ":blob.bin", str(back)))
                     for _ in range(RUNS)]
            boot_s = [timed(lambda: board.mpremote("soft-reset")) for _ in range(RUNS)]
        finally:
            board.stop()
    med = statistics.median
    return [
        ("mpremote exec \"print(1+1)\" (median of {})".format(RUNS), med(exec_s), "s", "< 1 s", med(exec_s) < 1),
        ("mpremote fs cp 50 kB to the board", med(cp_s), "s", "< 2 s", med(cp_s) < 2),
        ("mpremote fs cp 50 kB from the board", med(get_s), "s", "< 3 s", med(get_s) < 3),
        ("mpremote soft-reset (VM restart)", med(boot_s), "s", "< 1 s", med(boot_s) < 1),
    ]


if __name__ == "__main__":
    for r in rows():
        print(r)
