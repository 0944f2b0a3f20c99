"""`v2g secc` end to end: the package's EVCC <-> v2g secc <-> the controller on the virtual
board, over a veth pair between two network namespaces (tests/host/secc_fixture.py)."""

import os

import pytest
from secc_fixture import Rig, can_run

why = can_run()
pytestmark = [pytest.mark.skipif(why is not None, reason=why or ""), pytest.mark.timeout(300)]


@pytest.fixture
def rig(tmp_path):
    r = Rig(tmp_path, str(os.getpid() % 10000))
    try:
        yield r
    finally:
        r.close()


def loop_res(rig):
    """The SECC's charge loop answers as the vehicle decoded them (their parameters)."""
    return [e["msg"] for e in rig.evcc_records() if e["kind"] == "loop_res"]


def rational(x):
    return x["value"] * 10 ** x["exponent"]


def evse_events(rig):
    return [e for e in rig.events() if e["kind"] == "evse"]


def plug_and_set(rig, config=None, setpoint=None, limit=None):
    r = rig.relay
    rig.wait_controller()
    if config:
        res = r.do(do="config", **config)
        assert res["ok"], res
    assert r.do(do="plug")["ok"] and r.do(do="ev_ready")["ok"]
    if setpoint:
        res = r.do(do="setpoint", txn="t-sp", **setpoint)
        assert res["ok"], res
    if limit:
        res = r.do(do="limit", txn="t-lim", **limit)
        assert res["ok"], res
    return r


def test_dc_bpt_dynamic_vehicle_asking_more_is_held_to_max_discharge_amps(rig):
    """The vehicle asks for 100 kW of discharge; MAX_DISCHARGE_AMPS 6 A is what it is offered
    and what flows. The app's target and the floor are its TargetSOC / MinimumSOC."""
    r = plug_and_set(rig, config={"MAX_DISCHARGE_AMPS": 6},
                     setpoint={"soc_target_pct": 10, "mode": "discharge"})
    rig.start_secc()
    rig.start_evcc("--service", "DC_BPT", "--mode", "dynamic", "--loops", "15",
                   "--ask-discharge-w", "100000")
    assert rig.wait_evcc(120) == 0
    res = loop_res(rig)
    assert len(res) >= 10, rig.evcc_records()[-3:]
    dis = [rational(m["evse_max_discharge_current"]) for m in res]
    assert max(dis) == 6, dis
    st = r.do(do="state")["state"]
    floor = evse_events(rig)[-1]["min_soc"]
    assert all(m["min_soc"] == floor for m in res) and floor == 20   # the station's floor
    assert all(m["target_soc"] == floor for m in res)   # target 10 % stops at the floor
    # what flowed: never more than 6 A out of the battery (the plant's meter)
    flows = [e["req_a"] for e in evse_events(rig)]
    assert min(flows) >= -6 and min(flows) < -5, flows
    assert st["ma"] >= -6100
    sel = [e for e in rig.evcc_records() if e["kind"] == "selected"]
    assert sel and sel[0]["service"] == "DC_BPT" and sel[0]["mode"] == "dynamic"
