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


def test_scheduled_schedule_has_a_discharging_part_for_bpt_only_and_dynamic_carries_the_departure():
    out = run15("""
from iso15118.shared.messages.iso15118_20.common_messages import SelectedEnergyService
gw = FakeGateway(departure_s=3599)
c = worker.GatewayEVSEController(gw, "X")
res = {}
for svc in (ServiceV20.DC, ServiceV20.DC_BPT, ServiceV20.AC, ServiceV20.AC_BPT):
    sel = SelectedEnergyService(service=svc, is_free=False, parameter_set=None)
    p = asyncio.run(c.get_scheduled_se_params(sel, None))
    res[svc.name] = [t.discharging_schedule is not None for t in p.schedule_tuples]
d = asyncio.run(c.get_dynamic_se_params(None, None))
c._refresh()
l = asyncio.run(c.get_dc_charge_loop_params_v20(ControlMode.DYNAMIC, ServiceV20.DC_BPT))
res["dynamic"] = [d.departure_time, d.target_soc, d.min_soc, l.departure_time]
print(json.dumps(res))
""")
    assert not any(out["DC"]) and not any(out["AC"]), out       # no discharge offered without BPT
    assert out["DC_BPT"] and all(out["DC_BPT"]) and all(out["AC_BPT"]), out
    assert out["dynamic"] == [3599, 40, 20, 3599]


CODEC_PRELUDE = """
import json, sys, time
sys.path.insert(0, {secc!r})
from iso15118.shared.settings import SettingKey, shared_settings
shared_settings.update({{SettingKey.MESSAGE_LOG_JSON: False, SettingKey.MESSAGE_LOG_EXI: False}})
from iso15118.shared.exificient_exi_codec import ExificientEXICodec
from iso15118.shared.exi_codec import EXI
from iso15118.shared.messages.enums import Namespace
from iso15118.shared.messages.iso15118_20.common_messages import SessionSetupReq, SessionSetupRes
from iso15118.shared.messages.iso15118_20.common_types import MessageHeader, RationalNumber, ResponseCode
from iso15118.shared.messages.iso15118_20.dc import BPTDynamicDCChargeLoopRes, DCChargeLoopRes
import fast_exi

def rn(x):
    return RationalNumber.get_rational_repr(x)

hdr = MessageHeader(session_id="AB" * 8, timestamp=1700000000)
MESSAGES = [
    (SessionSetupReq(header=hdr, evcc_id="WMIV1234567890ABCDEX"), Namespace.ISO_V20_COMMON_MSG),
    (SessionSetupRes(header=hdr, response_code=ResponseCode.OK, evse_id="DE*V2G*E1"), Namespace.ISO_V20_COMMON_MSG),
    (DCChargeLoopRes(header=hdr, response_code=ResponseCode.OK, evse_present_current=rn(-10),
                     evse_present_voltage=rn(400), evse_power_limit_achieved=False,
                     evse_current_limit_achieved=True, evse_voltage_limit_achieved=False,
                     bpt_dynamic_dc_charge_loop_res=BPTDynamicDCChargeLoopRes(
                         evse_maximum_charge_power=rn(6400), evse_minimum_charge_power=rn(0),
                         evse_maximum_charge_current=rn(16), evse_maximum_voltage=rn(500),
                         evse_min_voltage=rn(0), evse_max_discharge_power=rn(4000),
                         evse_min_discharge_power=rn(0), evse_max_discharge_current=rn(10),
                         min_soc=20, target_soc=40)), Namespace.ISO_V20_DC),
]

def context(codec):
    # the JAXB context the Java codec last used (a private field of its base class)
    jc = codec.exi_codec
    f = jc.getClass().getSuperclass().getDeclaredField("jaxbContext")
    f.setAccessible(True)
    return codec.gateway.jvm.System.identityHashCode(f.get(jc))

def run(codec, rounds):
    exi = EXI()
    exi.set_exi_codec(codec)
    wire, contexts = [], set()
    for _ in range(rounds):
        for msg, ns in MESSAGES:
            b = exi.to_exi(msg, ns)
            wire.append(b.hex())
            contexts.add(("enc", ns, context(codec)))
            back = exi.from_exi(b, ns)
            contexts.add(("dec", ns, context(codec)))
            wire.append(back.json(exclude_none=True) if hasattr(back, "json") else str(back))
    return wire, contexts
"""


def run_codec(body):
    code = CODEC_PRELUDE.format(secc=str(ROOT / "host_tools" / "secc")) + body
    p = subprocess.run([str(PY15), "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_fast_codec_keeps_its_jaxb_contexts_and_encodes_as_the_stock_one():
    """The SECC's codec (fast_exi.py) builds one JAXB context per schema and keeps it; the
    package's stock codec builds one per message, most of its time per message. Both put the
    same bytes on the wire and read the same messages back."""
    out = run_codec("""
fast = fast_exi.FastEXICodec()
stock = ExificientEXICodec()
fw, fc = run(fast, 4)
sw, sc = run(stock, 4)
print(json.dumps({"fallback": fast.fallback, "same": fw == sw, "n": len(fw),
                  "fast_contexts": len(fc), "stock_contexts": len(sc)}))
""")
    assert out["fallback"] is None
    assert out["same"] and out["n"] == 4 * 3 * 2
    # one context per (direction, schema): the common messages and DC, however many messages
    assert out["fast_contexts"] == 4, out
    assert out["stock_contexts"] > 4 * 3, out        # a new one for (nearly) every message


def test_session_end_reaches_the_gateway_when_session_stop_res_is_sent_once():
    """A session that ends with SessionStop is over for the controller when SessionStopRes is
    sent, not after the package's 2 s data-link wait: the gateway hears it then, once; a
    session that fails is still reported when the package ends it."""
    out = run15("""
gw = FakeGateway()
c = worker.GatewayEVSEController(gw, "X")
class SessionStop: pass
class DCChargeLoop: pass
asyncio.run(c.set_present_protocol_state(DCChargeLoop()))
asyncio.run(c.set_present_protocol_state(SessionStop()))
at_res = [m for m in gw.sent if m["t"] == "ended"]
asyncio.run(c.session_ended("SessionStop", "Communication session terminated"))
after = [m for m in gw.sent if m["t"] == "ended"]
asyncio.run(c.session_ended("DCChargeLoop", "TCP peer closed connection"))
failed = [m for m in gw.sent if m["t"] == "ended"][len(after):]
print(json.dumps({"at_res": at_res, "after": len(after), "failed": failed}))
""")
    assert [m["ok"] for m in out["at_res"]] == [True]
    assert out["after"] == 1                      # not reported a second time
    assert [m["ok"] for m in out["failed"]] == [False]


def test_fast_codec_falls_back_to_the_stock_one_and_says_why():
    """No compilable source (a wheel without host_tools/secc/java/, a JRE without its compiler
    module): the stock codec runs, slower, and `fallback` names why for the gateway's log."""
    out = run_codec("""
fast_exi.SOURCE = "/nonexistent/CachedContextCodec.java"
codec = fast_exi.FastEXICodec()
wire, _ = run(codec, 1)
print(json.dumps({"fallback": codec.fallback, "n": len(wire)}))
""")
    assert out["fallback"] and "CachedContextCodec.java" in out["fallback"]
    assert out["n"] == 6
