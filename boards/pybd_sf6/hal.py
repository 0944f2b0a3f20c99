"""HAL of the PYBD-SF6 class controller (STM32F767, Cortex-M7) on `machine` and `pyb`.

The pyboard HAL (boards/pyboard/hal.py, flashed with this board as the package
`board.pyboard`) drives the same carrier circuits with the same MicroPython APIs on the F7;
it reads the pin map from `board.pins`, which on this board is this folder's pins.py. This
module gives it the board's name, limits and update capacity. Safe state, watchdog, field bus
ports and the NTC table are the pyboard HAL's (see there).

Status: compiled with mpy-cross for armv7emdp; it runs only on the board. The test suite
builds it against fake `machine`/`pyb` modules (tests/host/test_pybd_sf6.py), not on hardware.
"""
from board.pyboard import hal as _pyboard
from board.pyboard.hal import PybCan, PybRs485, ntc_dc, ntc_fault, trial_watchdog  # noqa: F401

BOARD_NAME = 'pybd_sf6'
# The carrier's contactor and pilot wiring are rated 32 A (board.json repeats this for the host).
BOARD_LIMITS = {'MAX_CHARGE_AMPS': (6, 32), 'MAX_DISCHARGE_AMPS': (0, 32)}


class Hal(_pyboard.Hal):
    BOARD_NAME = BOARD_NAME
    BOARD_LIMITS = BOARD_LIMITS
    # Update slots are folders on the read-write filesystem in the 2 MiB SPI flash; the
    # installer's free-space check at fota_begin gives the real, smaller limit.
    UPDATE_SLOT_BYTES = 2048 * 1024
