"""Numbers on the host link as the host sees them: a decimal the operator typed reaches the
controller exact (a decimal fraction, not a float), and a setting a single-precision board
holds shows as the operator wrote it."""

import json
import struct
from decimal import Decimal

import cbor2

from core import config, controller, link
from core.cbor import Tag
from host_tools import console as C
from host_tools import link as hlink


def _single(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def test_a_decimal_from_the_host_reaches_the_controller_exact():
    args = {"FREQ_DEADBAND_HZ": 0.036, "MAX_CHARGE_AMPS": 32.0, "RESERVE_MARGIN": 25,
            "FREQ_RESPONSE_S": C._value("FREQ_RESPONSE_S", "0.5"), "GRID_RAMP_S": None,
            "METER_STALE_S": C._value("METER_STALE_S", "2.0005")}
    frame = hlink.encode_frame({"v": 1, "t": "cmd", "txn": "h1", "op": "config_set", "args": args})
    got = link.Link(None).feed(frame)[0]["args"]
    assert got == {"FREQ_DEADBAND_HZ": Tag(4, [-3, 36]), "MAX_CHARGE_AMPS": 32, "RESERVE_MARGIN": 25,
                   "FREQ_RESPONSE_S": Tag(4, [-1, 5]), "GRID_RAMP_S": None,
                   "METER_STALE_S": Tag(4, [-4, 20005])}
    # the controller takes the first ones exactly and refuses the one finer than its step
    ctl = controller.Controller(config.validate({}))
    ok, code, msg, data = ctl.command(0, "h1", "config_set", got)
    assert not ok and "METER_STALE_S: value 2.0005 is finer than the 0.001 s step" in msg
    del got["METER_STALE_S"]
    ok, code, msg, data = ctl.command(0, "h2", "config_set", got)
    assert ok, msg
    assert ctl.cfg.deadband_mhz == 36 and ctl.cfg.response_ms == 500 and ctl.cfg.max_charge_ma == 32000


def test_a_single_precision_boards_setting_shows_as_the_operator_wrote_it():
    cfg = config.validate({"FREQ_DEADBAND_HZ": 0.036, "FREQ_RESPONSE_S": 0.7})
    for k in ("FREQ_DEADBAND_HZ", "FREQ_RESPONSE_S"):
        cfg.values[k] = _single(cfg.values[k])      # what a float32 board holds
    assert repr(cbor2.loads(cbor2.dumps(cfg.values["FREQ_DEADBAND_HZ"]))) == "0.035999998450279236"
    ctl = controller.Controller(cfg)
    res = ctl.command(0, "t1", "config_get", {})
    frame = link.encode_frame(link.res_from("t1", res))
    values = hlink.Deframer().feed(frame)[0]["data"]["values"]
    # the console prints `KEY = json`: the operator's text
    assert json.dumps(values["FREQ_DEADBAND_HZ"]) == "0.036"
    assert json.dumps(values["FREQ_RESPONSE_S"]) == "0.7"
    assert values["MAX_CHARGE_AMPS"] == 32 and isinstance(values["MAX_CHARGE_AMPS"], int)


def test_no_float_leaves_the_host():
    msg = {"v": 1, "t": "cmd", "txn": "h1", "op": "limit",
           "args": {"charge_a": 12.5, "discharge_a": 1e300, "x": [0.1, float("inf")], "y": Decimal("7.25")}}
    got = link.Link(None).feed(hlink.encode_frame(msg))[0]["args"]
    assert got == {"charge_a": Tag(4, [-1, 125]), "discharge_a": Tag(4, [300, 1]),
                   "x": [Tag(4, [-1, 1]), float("inf")], "y": Tag(4, [-2, 725])}
    # a double beyond single range is refused by name, not read as inf
    ok, code, text, _ = controller.Controller(config.validate({})).command(
        0, "h1", "limit", {"discharge_a": got["discharge_a"]})
    assert not ok and "discharge_a" in text and "1" in text
