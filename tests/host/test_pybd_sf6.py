"""The PYBD-SF6 HAL (boards/pybd_sf6/hal.py) against the fake `machine` and `pyb` of the
pyboard HAL's tests, laid out as `v2g flash` lays it out on the board: this board's pins.py
as `board.pins`, the pyboard HAL as `board.pyboard.hal`, this hal.py as `board.hal`.

Under CPython only: the pyboard HAL's own tests (test_pyboard_hal.py) already run the shared
code in the MicroPython VM; what is new here is the package layout and the pin map.
"""
import sys
from pathlib import Path

import test_pyboard_hal as P
from core.controller import Inputs

from host_tools import flash

BOARDS = Path(__file__).resolve().parents[2] / "boards"


def _exec(path, name):
    d = {"__name__": name}
    exec(compile(path.read_text(), str(path), "exec"), d)
    return d


def load():
    """(the board.hal namespace, the board.pyboard.hal namespace) on a fresh fake board."""
    P.W = P.World()
    P.W.adc = {"X7": P.raw(3000), "X8": P.raw(3300), "X11": P.raw(1835)}
    names = ("machine", "pyb", "board", "board.pins", "board.pyboard", "board.pyboard.hal")
    saved = {k: sys.modules.get(k) for k in names}
    sys.modules["machine"] = P.FakeMachine
    sys.modules["pyb"] = P.FakePyb
    try:
        pins = P.Namespace(_exec(BOARDS / "pybd_sf6" / "pins.py", "board.pins"))
        sys.modules["board"] = P.Namespace({"pins": pins})
        sys.modules["board.pins"] = pins
        base_d = _exec(BOARDS / "pyboard" / "hal.py", "board.pyboard.hal")
        base_d["time"] = P.FakeTime
        base = P.Namespace(base_d)
        sys.modules["board.pyboard"] = P.Namespace({"hal": base})
        sys.modules["board.pyboard.hal"] = base
        mod = P.Namespace(_exec(BOARDS / "pybd_sf6" / "hal.py", "board.hal"))
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return mod, base


def test_the_hal_is_the_pyboards_on_this_boards_pins():
    mod, base = load()
    hal = mod.Hal()
    assert isinstance(hal, base.Hal)
    assert P.W.events[0] == ("pin", "Y9", P.FakePin.OUT, 0)          # contactor open first
    assert [e[1] for e in P.W.events if e[0] == "adc"] == ["X7", "X8", "X11"]
    assert [e[1] for e in P.W.events if e[0] == "uart"] == [2]       # the host link; RS-485 opens later
    hal.rs485.open(9600)
    assert sorted(P.W.uarts) == [1, 2]                               # USART1 on Y1/Y2
    inputs = Inputs()
    hal.read_inputs(inputs, 0)
    assert inputs.cp_high_mv > 8000 and inputs.evse_temp_dc == 200   # read from X7 and X11


def test_name_limits_and_capacity_are_this_boards():
    mod, _ = load()
    assert mod.BOARD_NAME == mod.Hal.BOARD_NAME == "pybd_sf6"
    info = flash.load_board("pybd_sf6")
    assert mod.Hal.BOARD_LIMITS == flash.config_limits(info)
    assert mod.Hal.UPDATE_SLOT_BYTES == 2048 * 1024
