"""Where the host tools find the controller's code, and how `import core` reaches it.

The firmware tree (`firmware/`: core, app, main.py, boot.py) and the boards (`boards/`)
are what `v2g` flashes, images and runs in the virtual board. In a checkout they are the
checkout's folders; an installed wheel carries a copy as package data under
`host_tools/_tree/` (setup.py puts it there at build time), so an installed `v2g` works
from any folder.

`firmware/core` is the contract between host and controller: link codec and message
checks, update manifest, CAN frames, settings, error codes. The host imports it under the
name the firmware uses, `core`, so that `from core import cbor` inside it means the same
module on both sides. No folder is added to sys.path for it: a finder on sys.meta_path
answers for the single top-level name `core` and nothing else (not `app`, `main`, `board`),
and it answers first, so `core` in a v2g process is always this tree's. `import host_tools`
installs it.
"""

import importlib.machinery
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_SHIPPED = _HERE / "_tree"

if (_SHIPPED / "firmware" / "core").is_dir():
    ROOT = _SHIPPED                  # installed: the copy inside the package
    CHECKOUT = None
else:
    ROOT = _HERE.parent              # a checkout (or an editable install of one)
    CHECKOUT = ROOT
FIRMWARE = ROOT / "firmware"
BOARDS = ROOT / "boards"
CORE = FIRMWARE / "core"


class CoreFinder:
    """Finds the top-level package `core` in FIRMWARE; declines every other name."""

    def __init__(self, firmware):
        self.firmware = str(firmware)

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "core":
            return None
        return importlib.machinery.PathFinder.find_spec("core", [self.firmware])

    def invalidate_caches(self):
        pass


def install_core_finder():
    """Make `import core` load firmware/core (once per process)."""
    if not any(isinstance(f, CoreFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, CoreFinder(FIRMWARE))


install_core_finder()
