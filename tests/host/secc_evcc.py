"""The vehicle for the SECC tests: the `iso15118` package's EVCC simulator, subclassed.

Run in .venv-15118 inside the vehicle's network namespace (tests/host/test_secc.py):
    python secc_evcc.py --iface IF --service DC_BPT --mode dynamic --plant SOCKET --out FILE

Changes to the stock simulator:
- picks the service and the parameter set with the asked control mode (the stock one always
  takes the first set, which is Scheduled);
- its SoC is the virtual board's plant battery (asked over the test's plant relay socket), so
  the HLC vehicle and the simulated battery are one car;
- asks for `--ask-discharge-w` of discharge (BPT), to show it gets no more than the SECC allows;
- with `--bad-value`, spoils one DC_ChargeLoopReq (the `--bad-at`th) on its way to the codec,
  past the vehicle's own message models, to see what the SECC does with a value out of range;
- records every charge loop answer (the SECC's limits, targets, min/target SoC) and each
  request/response round trip in `--out` (JSON lines).
"""

import argparse
import asyncio
import json
import os
import socket
import sys
import time
from pathlib import Path

from iso15118.evcc import Config, EVCCHandler
from iso15118.evcc.controller.simulator import SimEVController
from iso15118.evcc.evcc_config import EVCCConfig
from iso15118.evcc.states import iso15118_20_states as ev20
from iso15118.shared.messages.enums import ControlMode, ServiceV20
from iso15118.shared.messages.iso15118_20.common_messages import SelectedEnergyService
from iso15118.shared.messages.iso15118_20.common_types import RationalNumber
from iso15118.shared.messages.iso15118_20.dc import BPTDynamicDCChargeLoopReqParams
from iso15118.shared.messages import sdp
from iso15118.shared.settings import SettingKey, shared_settings

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "host_tools" / "secc"))
from fast_exi import FastEXICodec  # noqa: E402  (the SECC's codec: a real vehicle's is not slow)
from worker import warm_up  # noqa: E402  (the same warm-up as the SECC's: a real vehicle's codec is warm)

sdp.MIN_TCP_PORT = 1024   # the station's SECC listens on 8081, below the dynamic range

OUT = None


def record(**kw):
    OUT.write(json.dumps({"wall": time.time(), **kw}) + "\n")
    OUT.flush()


class Plant:
    def __init__(self, path):
        self.path = path

    def soc_pct(self):
        s = socket.socket(socket.AF_UNIX)
        s.connect(self.path)
        s.sendall(b'{"do": "state"}\n')
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
        s.close()
        return json.loads(buf)["state"]["soc_pm"] / 10


class TimedCodec(FastEXICodec):
    """Round trip per message pair as the vehicle sees it: encode(req) .. decode(res)."""

    t = None

    bad = None          # --bad-value: which value to spoil (BAD_VALUES)
    bad_at = 3          # in this DC_ChargeLoopReq of the session
    loop_reqs = 0

    def encode(self, message, namespace):
        TimedCodec.t = time.perf_counter()
        TimedCodec.name = next(iter(json.loads(message)), "?")
        if TimedCodec.name == "DC_ChargeLoopReq" and not TimedCodec.warming:
            TimedCodec.loop_reqs += 1
            if TimedCodec.bad and TimedCodec.loop_reqs == TimedCodec.bad_at:
                message = spoil(message, TimedCodec.bad)
        return super().encode(message, namespace)

    warming = True

    def decode(self, stream, namespace):
        out = super().decode(stream, namespace)
        if TimedCodec.t is not None and not TimedCodec.warming:
            record(kind="pair", req=TimedCodec.name, ms=(time.perf_counter() - TimedCodec.t) * 1000)
            TimedCodec.t = None
        return out


def _set_present_soc_120(req):
    # PresentSOC is a percentage (0..100); 120 still fits the schema's byte
    req.setdefault("DisplayParameters", {"ChargingComplete": False})["PresentSOC"] = 120


def _set_negative_max_current(req):
    # a maximum charge current below zero: no range of the schema's short forbids it
    params = next(v for k, v in req.items() if k.endswith("CLReqControlMode"))
    params["EVMaximumChargeCurrent"] = {"Exponent": 0, "Value": -10}


BAD_VALUES = {"present_soc_120": _set_present_soc_120, "negative_max_current": _set_negative_max_current}


def spoil(message, bad):
    """The DC_ChargeLoopReq's JSON with one value out of range, as the codec will encode it."""
    msg = json.loads(message)
    req = msg["DC_ChargeLoopReq"]
    BAD_VALUES[bad](req)
    record(kind="bad_value", bad=bad, req=req)
    return json.dumps(msg)


class Vehicle(SimEVController):
    def __init__(self, cfg, args):
        super().__init__(cfg)
        self.args = args
        self.plant = Plant(args.plant)
        self.loops = 0

    def soc(self):
        return int(self.plant.soc_pct())

    async def select_energy_service_v20(self, services):
        want = ServiceV20[self.args.service]
        mode = 2 if self.args.mode == "dynamic" else 1
        for s in services:
            if s.service != want:
                continue
            for ps in s.parameter_sets:
                cm = [p.int_value for p in ps.parameters if p.name == "ControlMode"]
                if cm and cm[0] == mode:
                    record(kind="selected", service=want.name, parameter_set=ps.id, mode=self.args.mode)
                    return SelectedEnergyService(service=s.service, is_free=s.is_free, parameter_set=ps)
        raise RuntimeError("the SECC offers no {} with control mode {}".format(want.name, mode))

    async def get_display_params(self):
        dp = await super().get_display_params()
        dp.present_soc = self.soc()
        return dp

    async def get_dc_ev_status(self):
        st = await super().get_dc_ev_status()
        st.ev_ress_soc = self.soc()
        return st

    async def get_bpt_dynamic_dc_charge_loop_params(self):
        p = await super().get_bpt_dynamic_dc_charge_loop_params()
        d = p.dict()
        w = self.args.ask_discharge_w
        d.update(ev_max_discharge_power=RationalNumber.get_rational_repr(w),
                 ev_max_discharge_current=RationalNumber.get_rational_repr(w / 230))
        return BPTDynamicDCChargeLoopReqParams(**d)

    async def continue_charging(self):
        self.loops += 1
        if self.loops > self.args.loops:
            return False
        if self.args.stop_file and Path(self.args.stop_file).exists():
            record(kind="stop_file")
            return False
        soc = self.plant.soc_pct()
        if self.args.stop_at_soc is not None and soc <= self.args.stop_at_soc:
            record(kind="stop_at_soc", soc=soc)
            return False
        await asyncio.sleep(self.args.loop_s)
        return True

    async def charge_loop_delay(self):
        return 0


def patch_loop_recording():
    """Record the SECC's charge loop answers as the vehicle decoded them."""
    for name in ("DCChargeLoop", "ACChargeLoop", "ScheduleExchange"):
        cls = getattr(ev20, name)
        orig = cls.process_message

        async def process_message(self, message, message_exi=None, _orig=orig, _name=name):
            body = getattr(message, "__dict__", {})
            res = None
            for v in body.values() if isinstance(body, dict) else ():
                if type(v).__name__.endswith("ChargeLoopRes"):
                    res = v
            if res is None and type(message).__name__.endswith("ChargeLoopRes"):
                res = message
            if _name == "ScheduleExchange" and type(message).__name__ == "ScheduleExchangeRes":
                record(kind="schedule_res", msg=json.loads(message.json(exclude_none=True)))
            elif res is not None:
                code = getattr(message, "response_code", None)
                record(kind="loop_res", msg=json.loads(res.json(exclude_none=True)),
                       code=getattr(code, "value", code))
            return await _orig(self, message, message_exi)

        cls.process_message = process_message


def patch_prompt_stop():
    """The vehicle closes the TCP connection as soon as its session ends: the package's stop
    waits 2 s, then 3 s more, which only a real data link's tear-down needs (the SECC keeps
    its own waits). A successful session's process then ends at once."""
    from iso15118.evcc.comm_session_handler import EVCCCommunicationSession

    async def stop(self, reason):
        record(kind="stopped", reason=reason)
        try:
            await self.ev_controller.enable_charging(False)
            self.writer.close()
            await self.writer.wait_closed()
        except (OSError, asyncio.TimeoutError):
            pass

    EVCCCommunicationSession.stop = stop


def patch_tls(root):
    """The vehicle's TLS: 1.3 only, trusting the V2G root in `root` (the package's own client
    context reads its test PKI's fixed paths)."""
    import ssl

    from iso15118.evcc.transport import tcp_client

    def ctx(server_side):
        c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        c.minimum_version = ssl.TLSVersion.TLSv1_3
        c.check_hostname = False
        c.load_verify_locations(root)
        return c

    tcp_client.get_ssl_context = ctx


def relax_charge_loop_timeout(seconds):
    """The vehicle's charge loop deadline (-20: 0.5 s) set to `seconds`: on a busy test machine
    the Java codec's tail passes 0.5 s now and then, which would end a session that a test is
    about for other reasons. `make perf` (bench/secc.py) keeps 0.5 s and counts the overruns."""
    from enum import Enum

    members = {name: m.value for name, m in ev20.Timeouts.__members__.items()}   # aliases too
    members["AC_CHARGE_LOOP_REQ"] = members["DC_CHARGE_LOOP_REQ"] = seconds
    ev20.Timeouts = Enum("Timeouts", members, type=float)


def parser():
    p = argparse.ArgumentParser()
    p.add_argument("--iface", required=True)
    p.add_argument("--service", default="DC_BPT")
    p.add_argument("--mode", default="dynamic")
    p.add_argument("--plant", required=True)
    p.add_argument("--out", required=False)
    p.add_argument("--tls", action="store_true")
    p.add_argument("--pki", default="")
    p.add_argument("--root", default="", help="the V2G root the vehicle trusts (TLS)")
    p.add_argument("--loops", type=int, default=20)
    p.add_argument("--loop-s", type=float, default=0.2)
    p.add_argument("--stop-at-soc", type=float, default=None)
    p.add_argument("--ask-discharge-w", type=float, default=100000)
    p.add_argument("--sdp-retries", type=int, default=5)
    p.add_argument("--loop-timeout", type=float, default=None)
    p.add_argument("--bad-value", choices=sorted(BAD_VALUES), default=None,
                   help="send one DC_ChargeLoopReq with this value out of range")
    p.add_argument("--bad-at", type=int, default=3, help="in this DC_ChargeLoopReq of the session")
    p.add_argument("--stop-file", default=None, help="end the session (SessionStop) once this file exists")
    p.add_argument("--args-from", default=None,
                   help="start the codec now, then wait for this file: a JSON list of the session's "
                        "further arguments (a vehicle made ready while the previous test ends)")
    return p


def session_args(argv):
    """The arguments, with those of --args-from once that file is there."""
    a = parser().parse_args(argv)
    if a.args_from:
        while not os.path.exists(a.args_from):
            time.sleep(0.02)
        with open(a.args_from) as f:
            a = parser().parse_args(argv + json.load(f))
    return a


async def main(argv):
    global OUT
    shared_settings.update({SettingKey.MESSAGE_LOG_JSON: False, SettingKey.MESSAGE_LOG_EXI: False})
    codec = TimedCodec()
    TimedCodec.t = None
    warm_up(codec)
    TimedCodec.t = None
    TimedCodec.warming = False
    args = await asyncio.to_thread(session_args, argv)
    OUT = open(args.out, "a")
    TimedCodec.bad, TimedCodec.bad_at = args.bad_value, args.bad_at
    if args.loop_timeout:
        relax_charge_loop_timeout(args.loop_timeout)
    if args.tls:
        patch_tls(args.root)
    shared_settings.update({SettingKey.PKI_PATH: args.pki or "/nonexistent",
                            SettingKey.MESSAGE_LOG_JSON: False, SettingKey.MESSAGE_LOG_EXI: False,
                            SettingKey.ENABLE_TLS_1_3: True})
    cfg = EVCCConfig(**{"supportedEnergyServices": [args.service],
                        "supportedProtocols": ["ISO_15118_20_DC" if args.service.startswith("DC")
                                               else "ISO_15118_20_AC"],
                        "useTls": args.tls, "isCertInstallNeeded": False, "chargeLoopCycle": args.loops,
                        "sdpRetryCycles": args.sdp_retries})
    cfg.load_raw_values()
    patch_loop_recording()
    patch_prompt_stop()
    record(kind="start")
    await EVCCHandler(evcc_config=cfg, iface=args.iface, exi_codec=codec,
                      ev_controller=Vehicle(cfg, args)).start()


if __name__ == "__main__":
    _ = Config, ControlMode   # noqa
    asyncio.run(main(sys.argv[1:]))
    sys.exit(0)
