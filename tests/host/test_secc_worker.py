"""The SECC worker's EVSE controller in the ISO 15118 venv, without a network or a vehicle:
the known upstream problems it works around, and limits that follow the controller."""

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PY15 = ROOT / ".venv-15118" / "bin" / "python"
pytestmark = pytest.mark.skipif(not PY15.exists(), reason="no .venv-15118 (make venv-15118)")

PRELUDE = """
import asyncio, json, sys
sys.path.insert(0, {secc!r})
from iso15118.secc.controller.evse_data import EVSEACCLLimits
from iso15118.secc.controller.simulator import SimEVSEController
from iso15118.shared.messages.enums import ControlMode, ServiceV20
import worker

class FakeGateway:
    def __init__(self, **evse):
        self.evse = dict(chg_a=16, dis_a=10, req_a=-10, volts=230, amps=-10, soc=60, target_soc=40,
                         min_soc=20, departure_s=None, cp="C", contactor=True, stop=False,
                         mode="discharging", seq=1)
        self.evse.update(evse)
        self.sent = []
    def send(self, msg):
        self.sent.append(msg)

def rat(x):
    return x.value * 10 ** x.exponent
"""


def run15(body):
    code = PRELUDE.format(secc=str(ROOT / "host_tools" / "secc")) + body
    p = subprocess.run([str(PY15), "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_stock_ac_bpt_dynamic_crashes_with_unset_session_limits_ours_does_not():
    out = run15("""
stock = SimEVSEController()
stock.evse_data_context.session_limits.ac_limits = EVSEACCLLimits()
try:
    asyncio.run(stock.get_ac_charge_loop_params_v20(ControlMode.DYNAMIC, ServiceV20.AC_BPT))
    crash = None
except TypeError as e:
    crash = str(e)
ours = worker.GatewayEVSEController(FakeGateway(), "DE*V2G*E1")
ours.evse_data_context.session_limits.ac_limits = EVSEACCLLimits()
p = asyncio.run(ours.get_ac_charge_loop_params_v20(ControlMode.DYNAMIC, ServiceV20.AC_BPT))
print(json.dumps({"crash": crash, "target": rat(p.evse_target_active_power)}))
""")
    assert out["crash"] and "not supported" in out["crash"]      # upstream: None > 0
    assert out["target"] == -10 * 230                           # ours: the controller's discharge


def test_dc_bpt_limits_follow_the_controller_and_a_vehicle_gets_no_more():
    out = run15("""
gw = FakeGateway()
c = worker.GatewayEVSEController(gw, "DE*V2G*E1")
a = asyncio.run(c.get_dc_charge_loop_params_v20(ControlMode.DYNAMIC, ServiceV20.DC_BPT))
gw.evse.update(dis_a=3, chg_a=0)          # e.g. a thermal derate and a grid trip
b = asyncio.run(c.get_dc_charge_loop_params_v20(ControlMode.DYNAMIC, ServiceV20.DC_BPT))
gw.evse.update(stop=True)
st = asyncio.run(c.get_evse_status())
cpd = asyncio.run(c.get_dc_charge_params_v20(ServiceV20.DC_BPT))
print(json.dumps({"a_dis": rat(a.evse_max_discharge_current), "a_chg": rat(a.evse_maximum_charge_current),
                  "a_min": a.min_soc, "a_target": a.target_soc,
                  "b_dis": rat(b.evse_max_discharge_current), "b_chg": rat(b.evse_maximum_charge_current),
                  "b_pdis": rat(b.evse_max_discharge_power),
                  "stop": st.evse_notification.value, "cpd_dis": rat(cpd.evse_max_discharge_current)}))
""")
    assert (out["a_dis"], out["a_chg"], out["a_min"], out["a_target"]) == (10, 16, 20, 40)
    assert (out["b_dis"], out["b_chg"], out["b_pdis"]) == (3, 0, 3 * 230)
    assert out["stop"] == "Terminate"
    assert out["cpd_dis"] == 0     # stop: rated limits at 0 too


def test_service_list_offers_bpt_first_then_charge_only():
    out = run15("""
from iso15118.shared.messages.enums import Protocol
c = worker.GatewayEVSEController(FakeGateway(), "X")
res = {}
for proto in (Protocol.ISO_15118_20_DC, Protocol.ISO_15118_20_AC):
    c.set_selected_protocol(proto)
    res[proto.name] = [s.service_id for s in asyncio.run(c.get_energy_service_list()).services]
print(json.dumps(res))
""")
    assert out == {"ISO_15118_20_DC": [6, 2], "ISO_15118_20_AC": [5, 1]}
