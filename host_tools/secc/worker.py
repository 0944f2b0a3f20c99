"""The SECC process: ISO 15118-20 for one EVSE, run in the ISO 15118 venv (.venv-15118).

Started by `v2g secc` (host_tools/secc/gateway.py), never by hand. Imports only the `iso15118`
package, the standard library, proto.py and fast_exi.py beside it. It decides nothing about power: every
EVSE limit it sends is the controller's present limit, as the gateway last reported it
(proto.py, "evse"), and the vehicle's reports go back to the gateway.

What it changes in the package, and why:
- the TCP server: a fixed port (`--port`), and the TLS handshake done by us after accepting,
  so that a handshake that fails or times out is reported (asyncio drops it silently);
- the TLS context: TLS 1.3 only (ISO 15118-20), the SECC chain and key from `--pki`,
  the vehicle's certificate checked against `oem_root.pem` when that file is there;
- the EVSE controller: the package's simulator with the controller's limits in place of its
  constants, and the session's events reported;
- the vehicle's DC charge loop values checked before each answer: a negative limit or target
  (in the schema's range, so the package takes it) ends the session with FAILED.
"""

import argparse
import asyncio
import logging
import os
import socket
import ssl
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import proto  # noqa: E402  (this folder; the worker is run as a file, not from the package)
from fast_exi import FastEXICodec  # noqa: E402

from iso15118.secc import SECCHandler  # noqa: E402
from iso15118.secc import comm_session_handler as csh  # noqa: E402
from iso15118.secc.controller.evse_data import (  # noqa: E402
    EVSEACCLLimits,
    EVSEACCPDLimits,
    EVSEDCCLLimits,
    EVSEDCCPDLimits,
)
from iso15118.secc.controller.interface import ServiceStatus  # noqa: E402
from iso15118.secc.controller.simulator import SimEVSEController  # noqa: E402
from iso15118.secc.secc_settings import Config  # noqa: E402
from iso15118.secc.transport import tcp_server as tcp  # noqa: E402
from iso15118.shared.messages.datatypes import (  # noqa: E402
    PVEVSEMaxCurrentLimit,
    PVEVSEPresentCurrent,
    PVEVSEPresentVoltage,
)
from iso15118.shared.messages.enums import AuthEnum, Protocol, ServiceV20  # noqa: E402
from iso15118.shared.messages.iso15118_20.ac import (  # noqa: E402
    ACChargeParameterDiscoveryResParams,
    BPTACChargeParameterDiscoveryResParams,
)
from iso15118.shared.messages.iso15118_20.common_messages import (  # noqa: E402
    DynamicScheduleExchangeResParams,
    PowerScheduleEntry,
    Service,
    ServiceList,
)
from iso15118.shared.messages.iso15118_20.common_types import (  # noqa: E402
    EVSENotification,
    EVSEStatus,
    RationalNumber,
)
from iso15118.shared.messages.iso15118_20.dc import (  # noqa: E402
    BPTDCChargeParameterDiscoveryResParams,
    DCChargeParameterDiscoveryResParams,
)
from iso15118.shared.messages import sdp  # noqa: E402
from iso15118.shared.settings import SettingKey, shared_settings  # noqa: E402

log = logging.getLogger("v2g.secc")

HANDSHAKE_S = 10.0        # TLS handshake allowed after the TCP accept
MIN_POWER_W = 0           # the EVSE can go down to nothing: the controller may allow 0
SCHEDULE_S = 86400        # one schedule entry: the present limits, renewed by the loop


def _rn(x):
    return RationalNumber.get_rational_repr(x)


# ------------------------------------------------------------------ the gateway line

class Gateway:
    """The socket to `v2g secc`: the latest EVSE snapshot in, events out."""

    def __init__(self, sock):
        self.sock = sock
        self.evse = {"chg_a": 0, "dis_a": 0, "volts": 230, "amps": 0, "soc": None,
                     "target_soc": None, "min_soc": None, "departure_s": None, "cp": "B",
                     "contactor": False, "stop": False, "mode": "connected", "seq": 0}
        self.changed = asyncio.Event()
        self.gone = asyncio.Event()
        self._writer = None

    async def connect(self):
        self._reader, self._writer = await asyncio.open_connection(sock=self.sock)

    async def run(self):
        reader = self._reader
        while True:
            line = await reader.readline()
            if not line:
                break
            msg = proto.loads(line)
            if msg is None:
                log.warning("gateway: a line that is not a message: %r", line[:80])
                continue
            if msg["t"] == "evse":
                self.evse.update({k: v for k, v in msg.items() if k != "t"})
                self.changed.set()
            elif msg["t"] == "stop":
                break
        self.gone.set()

    def send(self, msg):
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(proto.dumps(msg))


# ------------------------------------------------------------------ the EVSE controller

class GatewayEVSEController(SimEVSEController):
    """The package's simulated EVSE with the controller's limits and readings in place of
    its constants. Limits are rebuilt from the last snapshot before every answer."""

    def __init__(self, gw: Gateway, evse_id: str):
        super().__init__()
        self.gw = gw
        self.evse_id = evse_id
        self._last_state = None
        self._early_ends = 0      # sessions whose end was reported at SessionStopRes

    # -- what the controller allows, in the package's units (W, A, V)
    def _ev(self):
        return self.gw.evse

    def _limits(self):
        e = self._ev()
        v = max(1.0, float(e["volts"] or 0))
        chg_a = max(0.0, float(e["chg_a"] or 0))
        dis_a = max(0.0, float(e["dis_a"] or 0))
        if e.get("stop"):
            chg_a = dis_a = 0.0
        return chg_a, dis_a, v

    def _refresh(self):
        """Session limits from the controller's present limits (they follow it in the loop)."""
        chg_a, dis_a, v = self._limits()
        e = self._ev()
        ctx = self.evse_data_context
        ctx.session_limits.dc_limits = EVSEDCCLLimits(
            max_charge_power=chg_a * v, min_charge_power=MIN_POWER_W, max_charge_current=chg_a,
            max_voltage=max(v, 1.0), min_voltage=0,
            max_discharge_power=dis_a * v, min_discharge_power=MIN_POWER_W,
            max_discharge_current=dis_a)
        # AC: the package sends max_charge_power or -max_discharge_power as the EVSE's target;
        # only one may be non-zero. The controller's present request decides which.
        amps = float(e.get("req_a") or 0)
        ac = EVSEACCLLimits(max_charge_power=0, max_discharge_power=0,
                            max_charge_reactive_power=0, max_discharge_reactive_power=0)
        if amps > 0:
            ac.max_charge_power = min(amps, chg_a) * v
        elif amps < 0:
            ac.max_discharge_power = min(-amps, dis_a) * v
        ctx.session_limits.ac_limits = ac
        ctx.rated_limits.dc_limits = EVSEDCCPDLimits(
            max_charge_power=chg_a * v, min_charge_power=MIN_POWER_W, max_charge_current=chg_a,
            min_charge_current=0, max_voltage=max(v, 1.0), min_voltage=0,
            max_discharge_power=dis_a * v, min_discharge_power=MIN_POWER_W,
            max_discharge_current=dis_a, min_discharge_current=0)
        ctx.rated_limits.ac_limits = EVSEACCPDLimits(
            max_current=chg_a, max_charge_power=chg_a * v, min_charge_power=MIN_POWER_W,
            max_discharge_power=dis_a * v, min_discharge_power=MIN_POWER_W)
        ctx.min_soc = e.get("min_soc")
        ctx.target_soc = e.get("target_soc")
        ctx.departure_time = e.get("departure_s")
        ctx.present_current = float(e.get("amps") or 0)
        ctx.present_voltage = v
        ctx.present_active_power = float(e.get("amps") or 0) * v
        ctx.present_active_power_l2 = 0
        ctx.present_active_power_l3 = 0

    def _report_ev(self, service=None, mode=None):
        ev = self.ev_data_context
        msg = {"t": "ev", "soc": getattr(ev, "present_soc", None),
               "service": service.name if service is not None else None,
               "mode": mode.name if mode is not None else None}
        for k in ("target_current", "target_voltage", "max_charge_power", "max_discharge_power",
                  "max_charge_current", "max_discharge_current", "present_active_power",
                  "target_soc", "min_soc"):
            x = getattr(ev, k, None)
            if x is not None and not isinstance(x, (int, float)):
                continue
            msg[k] = x
        self.gw.send(msg)

    # -- identity, services, authorisation
    async def get_evse_id(self, protocol):
        return self.evse_id

    async def get_energy_service_list(self) -> ServiceList:
        # BPT first: a vehicle without BPT matches the charge-only service that follows
        if self.get_selected_protocol() == Protocol.ISO_15118_20_DC:
            ids = [ServiceV20.DC_BPT, ServiceV20.DC]
        else:
            ids = [ServiceV20.AC_BPT, ServiceV20.AC]
        return ServiceList(services=[Service(service_id=s.id, free_service=False) for s in ids])

    def is_eim_authorized(self) -> bool:
        # EIM: the station's own means (the app, RFID through the CSMS) authorise the session
        # before the controller offers energy; the controller's `stop` ends it.
        return True

    # -- the vehicle's values: refused when out of range
    async def send_charging_command(self, ev_target_voltage=None, ev_target_current=None, *a, **kw):
        # The package calls this with each DC_ChargeLoopReq (PreChargeReq too) after storing the
        # vehicle's values, and ends the session with FAILED when it raises. Its message models
        # check only the schema's ranges (a short, a byte): a negative maximum passes them.
        why = ev_value_out_of_range(self.ev_data_context.session_limits.dc_limits,
                                    {"EVTargetVoltage": ev_target_voltage, "EVTargetCurrent": ev_target_current})
        if why:
            self.gw.send({"t": "ev_refused", "why": why})
            raise ValueError("the vehicle's " + why)
        return await super().send_charging_command(ev_target_voltage, ev_target_current, *a, **kw)

    # -- charge parameter discovery: the controller's limits as rated limits
    async def get_dc_charge_params_v20(self, energy_service):
        chg_a, dis_a, v = self._limits()
        p = DCChargeParameterDiscoveryResParams(
            evse_max_charge_power=_rn(chg_a * v), evse_min_charge_power=_rn(MIN_POWER_W),
            evse_max_charge_current=_rn(chg_a), evse_min_charge_current=_rn(0),
            evse_max_voltage=_rn(max(v, 1.0)), evse_min_voltage=_rn(0))
        if energy_service == ServiceV20.DC_BPT:
            return BPTDCChargeParameterDiscoveryResParams(
                **p.dict(), evse_max_discharge_power=_rn(dis_a * v),
                evse_min_discharge_power=_rn(MIN_POWER_W),
                evse_max_discharge_current=_rn(dis_a), evse_min_discharge_current=_rn(0))
        return p

    async def get_ac_charge_params_v20(self, energy_service):
        chg_a, dis_a, v = self._limits()
        p = ACChargeParameterDiscoveryResParams(
            evse_max_charge_power=_rn(chg_a * v), evse_min_charge_power=_rn(MIN_POWER_W),
            evse_nominal_frequency=_rn(50), max_power_asymmetry=_rn(0),
            evse_power_ramp_limit=_rn(100), evse_present_active_power=_rn(0))
        if energy_service == ServiceV20.AC_BPT:
            return BPTACChargeParameterDiscoveryResParams(
                **p.dict(), evse_max_discharge_power=_rn(dis_a * v),
                evse_min_discharge_power=_rn(MIN_POWER_W))
        return p

    # -- schedule exchange
    async def get_dynamic_se_params(self, selected_energy_service, schedule_exchange_req):
        e = self._ev()
        # the app's target and the station's floor become the vehicle's targets
        return DynamicScheduleExchangeResParams(
            departure_time=e.get("departure_s"), min_soc=e.get("min_soc"),
            target_soc=e.get("target_soc"))

    async def get_scheduled_se_params(self, selected_energy_service, schedule_exchange_req):
        # the package's schedule (with its price tables) carrying the controller's present
        # limits: one entry each way, renewed in every charge loop answer
        res = await super().get_scheduled_se_params(selected_energy_service, schedule_exchange_req)
        chg_a, dis_a, v = self._limits()
        now = int(time.time())
        service = getattr(selected_energy_service, "service", selected_energy_service)
        bpt = service in (ServiceV20.AC_BPT, ServiceV20.DC_BPT)
        for tup in res.schedule_tuples:
            if not bpt:
                # the package's schedule has a discharging part whatever the service: a vehicle
                # without BPT is offered no discharge, not even a schedule of it
                tup.discharging_schedule = None
            ps = tup.charging_schedule.power_schedule
            ps.time_anchor = now
            ps.available_energy = None
            ps.schedule_entry_list.entries = [PowerScheduleEntry(duration=SCHEDULE_S, power=_rn(chg_a * v))]
            if tup.discharging_schedule is not None:
                ds = tup.discharging_schedule.power_schedule
                ds.time_anchor = now
                ds.schedule_entry_list.entries = [
                    PowerScheduleEntry(duration=SCHEDULE_S, power=_rn(-dis_a * v))]
        return res

    # -- the charge loop: limits follow the controller
    async def get_dc_charge_loop_params_v20(self, control_mode, selected_service):
        self._refresh()
        self._report_ev(selected_service, control_mode)
        return await super().get_dc_charge_loop_params_v20(control_mode, selected_service)

    async def get_ac_charge_loop_params_v20(self, control_mode, selected_service):
        # the stock method crashes (None > 0) when session limits are unset: _refresh sets all
        self._refresh()
        self._report_ev(selected_service, control_mode)
        return await super().get_ac_charge_loop_params_v20(control_mode, selected_service)

    async def get_evse_present_current(self, protocol):
        a = float(self._ev().get("amps") or 0)
        if protocol == Protocol.ISO_15118_20_DC:
            return _rn(a)
        return PVEVSEPresentCurrent(multiplier=0, value=int(a), unit="A")

    async def get_evse_present_voltage(self, protocol):
        v = float(self._ev().get("volts") or 0)
        if protocol == Protocol.ISO_15118_20_DC:
            return _rn(v)
        return PVEVSEPresentVoltage(multiplier=0, value=int(v), unit="V")

    async def get_evse_max_current_limit(self):
        chg_a, _, _ = self._limits()
        return PVEVSEMaxCurrentLimit(multiplier=0, value=int(chg_a), unit="A")

    async def is_evse_current_limit_achieved(self) -> bool:
        e = self._ev()
        return bool(e.get("limited"))

    async def get_evse_status(self):
        if self._ev().get("stop"):
            # the controller ended the session (fault, stop, HLC failure): tell the vehicle
            return EVSEStatus(notification_max_delay=0, evse_notification=EVSENotification.TERMINATE)
        return None

    async def is_contactor_closed(self):
        # the controller closes its contactor when energy should flow; the SECC only learns it
        return self._ev().get("mode") != "fault"

    async def get_cp_state(self):
        from iso15118.shared.messages.enums import CpState
        cp = self._ev().get("cp")
        return {"A": CpState.A2, "B": CpState.B2, "C": CpState.C2, "D": CpState.D2,
                "E": CpState.E, "F": CpState.F}.get(cp, CpState.UNKNOWN)

    async def set_present_protocol_state(self, state):
        name = type(state).__name__
        if name != self._last_state:
            self._last_state = name
            self.gw.send({"t": "state", "state": name})
        if name == "SessionStop":
            # called once SessionStopRes is sent: the session is over for the controller now.
            # The package reports it (session_ended) only after its 2 s data-link wait, which
            # would leave the pilot at 5 % that long, and let the end of this session land on
            # a vehicle plugged in meanwhile.
            self._early_ends += 1
            self.gw.send({"t": "ended", "ok": True, "state": name, "reason": "SessionStopRes sent"})

    async def session_ended(self, current_state: str, reason: str):
        ok = "SessionStop" in str(current_state) or "EV requested to terminate" in str(reason)
        if ok and self._early_ends > 0:
            self._early_ends -= 1       # reported at SessionStopRes already
            return
        self.gw.send({"t": "ended", "ok": ok, "state": str(current_state), "reason": str(reason)})


# the vehicle's DC charge loop limits (the package's names) and their -20 names
EV_DC_LIMITS = (("max_charge_power", "EVMaximumChargePower"), ("min_charge_power", "EVMinimumChargePower"),
                ("max_charge_current", "EVMaximumChargeCurrent"), ("max_voltage", "EVMaximumVoltage"),
                ("min_voltage", "EVMinimumVoltage"), ("max_discharge_power", "EVMaximumDischargePower"),
                ("min_discharge_power", "EVMinimumDischargePower"),
                ("max_discharge_current", "EVMaximumDischargeCurrent"))


def ev_value_out_of_range(dc_limits, targets):
    """Why the vehicle's charge loop values cannot be taken (one named, with its value), or
    None. -20 gives magnitudes here (discharge has its own fields): none is below zero."""
    values = [(name, getattr(dc_limits, key, None)) for key, name in EV_DC_LIMITS]
    for name, x in values + sorted(targets.items()):
        if x is not None and x < 0:
            return "{} {:g} is below zero".format(name, x)
    return None


# ------------------------------------------------------------------ codec timing

class TimedCodec(FastEXICodec):
    """The EXI codec (fast_exi.py), timing each request/response pair the SECC handles."""

    def __init__(self, gw):
        t0 = time.perf_counter()
        super().__init__()
        self.startup_ms = (time.perf_counter() - t0) * 1000
        self.gw = gw
        self._t_req = None
        self._req = None

    warming = False

    def decode(self, stream, namespace):
        if self.warming:
            return super().decode(stream, namespace)
        self._t_req = time.perf_counter()
        out = super().decode(stream, namespace)
        try:
            self._req = next(iter(__import__("json").loads(out)))
        except (ValueError, StopIteration, TypeError):
            self._req = "?"
        return out

    def encode(self, message, namespace):
        out = super().encode(message, namespace)
        if self._t_req is not None and not self.warming:
            ms = (time.perf_counter() - self._t_req) * 1000
            self.gw.send({"t": "pair", "req": self._req, "ms": round(ms, 2),
                          "seq": self.gw.evse.get("seq", 0)})
            self._t_req = None
        return out


def warm_up(codec, rounds=3):
    """Encode and decode a SessionSetup pair a few times before the first vehicle: the JVM
    loads and compiles the codec's grammar on first use (about 2 s on two busy cores), which
    alone would overrun the vehicle's 2 s SessionSetup timeout. Returns the ms it took."""
    from iso15118.shared.exi_codec import EXI
    from iso15118.shared.messages.enums import Namespace
    from iso15118.shared.messages.iso15118_20.common_messages import SessionSetupReq, SessionSetupRes
    from iso15118.shared.messages.iso15118_20.common_types import MessageHeader, ResponseCode

    t0 = time.perf_counter()
    exi = EXI()
    exi.set_exi_codec(codec)
    for _ in range(rounds):
        req = SessionSetupReq(header=MessageHeader(session_id="00" * 8, timestamp=time.time()),
                              evcc_id="WARMUP0000000000")
        exi.from_exi(exi.to_exi(req, Namespace.ISO_V20_COMMON_MSG), Namespace.ISO_V20_COMMON_MSG)
        res = SessionSetupRes(header=MessageHeader(session_id="AB" * 8, timestamp=time.time()),
                              response_code=ResponseCode.OK, evse_id="WARMUP")
        exi.from_exi(exi.to_exi(res, Namespace.ISO_V20_COMMON_MSG), Namespace.ISO_V20_COMMON_MSG)
    return (time.perf_counter() - t0) * 1000


# ------------------------------------------------------------------ TLS and the TCP server

def tls_context(pki):
    """TLS 1.3 only (ISO 15118-20); the SECC's chain and key; the vehicle's certificate
    checked against oem_root.pem when present."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(os.path.join(pki, "secc_chain.pem"), os.path.join(pki, "secc_key.pem"))
    oem = os.path.join(pki, "oem_root.pem")
    if os.path.exists(oem):
        ctx.load_verify_locations(oem)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def make_server_class(gw, port, ctx):
    class GatewayTCPServer(tcp.TCPServer):
        """The package's server on our port; TLS done after the accept so a failed handshake
        is seen and reported."""

        def __init__(self, queue, iface):
            super().__init__(queue, iface)
            self.port = port

        def _refresh_port(self):
            pass   # the port is the configured one

        async def server_factory(self, ready_event, tls):
            want_tls = tls and ctx is not None
            sock = socket.socket(family=socket.AF_INET6, type=socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.full_ipv6_address = await tcp.get_link_local_full_addr(self.port, self.iface)
            self.ipv6_address_host = self.full_ipv6_address[0]
            sock.bind(self.full_ipv6_address)
            self.is_tls_enabled = want_tls

            loop = asyncio.get_running_loop()

            async def serve(transport):
                # The connection is held (reading paused since connection_made), so no byte of
                # the vehicle's ClientHello is read before the TLS layer is in place.
                peer = transport.get_extra_info("peername")
                reader = asyncio.StreamReader()
                proto = asyncio.StreamReaderProtocol(reader)
                if want_tls:
                    try:
                        transport = await asyncio.wait_for(
                            loop.start_tls(transport, proto, ctx, server_side=True), HANDSHAKE_S)
                    except (asyncio.TimeoutError, ssl.SSLError, OSError, ConnectionError) as e:
                        why = "timed out after {} s".format(HANDSHAKE_S) if isinstance(
                            e, asyncio.TimeoutError) else "{}: {}".format(type(e).__name__, e)
                        gw.send({"t": "handshake_failed", "peer": str(peer and peer[0]), "why": why})
                        transport.close()
                        return
                else:
                    transport.set_protocol(proto)
                proto.connection_made(transport)
                if not want_tls:
                    transport.resume_reading()
                writer = asyncio.StreamWriter(transport, proto, reader, loop)
                await self(reader, writer)

            class Held(asyncio.Protocol):
                def connection_made(self, transport):
                    transport.pause_reading()
                    loop.create_task(serve(transport))

            self.server = await loop.create_server(Held, sock=sock)
            log.info("%s server on [%s%%%s]:%d", "TLS" if want_tls else "TCP",
                     self.ipv6_address_host, self.iface, self.port)
            ready_event.set()
            try:
                await asyncio.shield(self.server.wait_closed())
            except asyncio.CancelledError:
                self.server.close()
                await self.server.wait_closed()

    return GatewayTCPServer


# ------------------------------------------------------------------ main

async def main(args):
    sock = socket.socket(fileno=args.fd)
    gw = Gateway(sock)
    await gw.connect()
    gw_task = asyncio.create_task(gw.run())
    ctx = tls_context(args.pki) if args.tls else None
    # The package only announces ports of the dynamic range (49152-65535, as ISO 15118 names it);
    # the field's deployments use 8081, so the configured port is announced whatever it is
    # (the gateway warns below 49152: a strict vehicle may refuse it).
    sdp.MIN_TCP_PORT = min(sdp.MIN_TCP_PORT, args.port)
    csh.TCPServer = make_server_class(gw, args.port, ctx)

    shared_settings.update({
        SettingKey.PKI_PATH: args.pki or "/nonexistent",
        SettingKey.MESSAGE_LOG_JSON: args.message_log,
        SettingKey.MESSAGE_LOG_EXI: False,
        SettingKey.ENABLE_TLS_1_3: True,
    })
    config = Config()
    config.iface = args.iface
    config.log_level = "INFO"
    config.enforce_tls = bool(args.tls)
    config.free_charging_service = False
    config.free_cert_install_service = False
    config.allow_cert_install_service = False
    config.use_cpo_backend = False
    config.supported_protocols = [Protocol.ISO_15118_20_DC, Protocol.ISO_15118_20_AC]
    config.supported_auth_options = [AuthEnum.EIM]
    config.standby_allowed = False

    codec = TimedCodec(gw)
    codec.warming = True
    warm_ms = warm_up(codec)
    codec.warming = False
    evse = GatewayEVSEController(gw, args.evse_id)
    await evse.set_status(ServiceStatus.STARTING)
    handler = SECCHandler(exi_codec=codec, evse_controller=evse, config=config)
    secc_task = asyncio.create_task(handler.start(args.iface))
    gw.send({"t": "ready", "codec_ms": round(codec.startup_ms, 1), "warm_ms": round(warm_ms, 1),
             "codec_fallback": codec.fallback})
    codec_task = asyncio.create_task(codec_gone(codec))
    done, _ = await asyncio.wait({gw_task, secc_task, codec_task}, return_when=asyncio.FIRST_COMPLETED)
    for t in done:
        if t is secc_task and t.exception() is not None:
            raise t.exception()
        if t is codec_task:
            # every later session would fail on its first message: end, and `v2g secc` starts
            # a new worker (and codec) for the next plug-in
            log.error("the EXI codec (JVM) ended with exit %s: the SECC process ends", t.result())
            sys.exit(3)


async def codec_gone(codec, poll_s=0.5):
    """Waits until the codec's JVM ends; its exit code. Polled: a thread blocked in wait()
    would keep this process alive after the gateway is gone."""
    proc = getattr(codec.gateway, "java_process", None)
    if proc is None:
        await asyncio.Event().wait()
    while proc.poll() is None:
        await asyncio.sleep(poll_s)
    return proc.returncode


def cli(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fd", type=int, required=True)
    p.add_argument("--iface", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--tls", action="store_true")
    p.add_argument("--pki", default="")
    p.add_argument("--evse-id", default="DE*V2G*E1")
    p.add_argument("--message-log", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(main(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    cli()
