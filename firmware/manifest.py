# Freeze manifest for a board build of MicroPython (make BOARD=... FROZEN_MANIFEST=...).
# Frozen modules run from flash: their bytecode takes no RAM, which leaves the heap to data.
# The board's HAL package is frozen by the board's own manifest (boards/<board>/manifest.py).
include("$(PORT_DIR)/boards/manifest.py")
package("core")
package("app")
module("main.py")
