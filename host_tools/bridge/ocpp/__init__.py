"""The charging station as the CSMS sees it: one EVSE, one connector, one controller.

The station is made of the functional blocks of OCPP 2.0.1 Part 2, one module each;
`OcppStation` only composes them and keeps the WebSocket session to the CSMS:

    connection      the `ocpp` package, wrapped in one place (OCPP-J, routing, checks)
    security        A Security: identity, security profiles 0-3, security events
    provisioning    B Provisioning: boot, heartbeat, device model, Reset (+ P DataTransfer)
    device_model    B Provisioning: the standard components and variables every station has
    availability    G Availability: StatusNotification, ChangeAvailability
    transactions    E Transactions, J MeterValues, F RequestStart/StopTransaction, offline queue
    smart_charging  K SmartCharging: charging profiles -> controller limits
    firmware        L FirmwareManagement: UpdateFirmware (signed bundles)
    diagnostics     N Diagnostics: GetLog; F TriggerMessage

`OcppStation.run()` keeps a WebSocket to the CSMS (OCPP 2.1 offered first when allowed,
2.0.1 otherwise), boots, sends heartbeats at the CSMS's interval and drains the offline
queue, with a WebSocket ping every WebSocketPingInterval to find a silently dead link. The
service feeds it the controller's telemetry (`on_sample`).
"""

import asyncio
import logging
import urllib.parse
from pathlib import Path

import websockets
import websockets.exceptions

from host_tools.bridge.backoff import Backoff
from host_tools.bridge.offline import Loops
from host_tools.bridge.ocpp.availability import Availability
from host_tools.bridge.ocpp.connection import VERSIONS, Connection, keepalive, routes_of
from host_tools.bridge.ocpp.context import MODEL, VENDOR, StationContext, utcnow
from host_tools.bridge.ocpp.device_model import DeviceModel
from host_tools.bridge.ocpp.diagnostics import Diagnostics
from host_tools.bridge.ocpp.firmware import Firmware
from host_tools.bridge.ocpp.provisioning import Provisioning
from host_tools.bridge.ocpp.security import Security, SecurityEvents, check_station_id
from host_tools.bridge.ocpp.smart_charging import SmartCharging
from host_tools.bridge.ocpp.transactions import Transactions

__all__ = ["OcppStation", "Security", "check_station_id"]

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT_S = 10.0
PONG_TIMEOUT_MAX_S = 10.0   # a pong later than min(WebSocketPingInterval, this) means a dead link
MAX_BACKOFF_S = 3600        # the longest reconnect wait the RetryBackOff* variables may make


class OcppStation:
    def __init__(self, station_id, url, ctl, state_dir, clog, *, max_version="2.1",
                 security=None, backoff=None, meter_interval_s=60.0, response_timeout=30.0,
                 handshake_timeout_s=HANDSHAKE_TIMEOUT_S, allow_file_updates=False, v16=None):
        self.id = check_station_id(station_id)
        self.url = url.rstrip("/") + "/" + urllib.parse.quote(station_id, safe="")
        security = security or Security(0)
        security.check(url)
        # v16(ws, booted): the OCPP 1.6 station (host_tools.bridge.ocpp16), offered last; it
        # runs its session on the socket when the CSMS picks ocpp1.6 (`--ocpp 1.6`: only it)
        self.v16 = v16
        self.subprotocols = {"2.1": ["ocpp2.1", "ocpp2.0.1"], "2.0.1": ["ocpp2.0.1"]}.get(max_version, []) \
            + (["ocpp1.6"] if v16 is not None else [])
        self.backoff = backoff or Backoff()
        self.response_timeout = response_timeout
        self.handshake_timeout_s = handshake_timeout_s
        state_dir = Path(state_dir)
        state_dir.mkdir(parents=True, exist_ok=True)

        dm = DeviceModel(state_dir)
        self.ctx = ctx = StationContext(self.id, ctl, clog, security, dm)
        se = self.security_events = SecurityEvents(ctx)
        t = self.transactions = Transactions(ctx, state_dir, None, meter_interval_s)
        a = self.availability = Availability(ctx, state_dir, lambda: t.running)
        t.availability = a
        sc = self.smart_charging = SmartCharging(ctx, t)
        p = self.provisioning = Provisioning(ctx, a, t, self.reconnect)
        p.security_events = se
        f = self.firmware = Firmware(ctx, allow_file_updates, se)
        d = self.diagnostics = Diagnostics(ctx, p, a, t, f)
        self._bind_variables(dm)
        # the order matters: the profiles of the transaction go, a scheduled Inoperative is
        # applied, then a Reset that waited for the transaction runs (and sees it)
        t.ended += [sc.transaction_ended, a.transaction_ended, p.transaction_ended]
        self.routes = routes_of(p, a, t, sc, f, d)
        self.loops = Loops(ctx, (("queue sender", t.queue_sender), ("profile ticker", sc.ticker)),
                           after_start=t.kick)     # a restarted sender looks at the queue at once

        self._reconnect = asyncio.Event()
        self._ping_changed = asyncio.Event()
        self.dead_links = 0          # sessions ended by the keepalive
        self.dead_link_at = None     # loop time of the last one (bench)

    def _bind_variables(self, dm):
        """The standard variables that are what a block or the session already keeps."""
        p, t, a, b, ctl = self.provisioning, self.transactions, self.availability, self.backoff, self.ctx.ctl

        def setter(obj, attr, conv=float):
            return lambda v: setattr(obj, attr, conv(v))
        dm.bind("OCPPCommCtrlr", "HeartbeatInterval", lambda: p.heartbeat_s, setter(p, "heartbeat_s", int))
        dm.bind("SampledDataCtrlr", "TxUpdatedInterval", lambda: int(t.meter_interval_s),
                setter(t, "meter_interval_s"))

        def longest(minimum, times):
            # the same bound as --retry-backoff: the longest wait stays within an hour
            if minimum * 2 ** times > MAX_BACKOFF_S:
                raise ValueError(f"RetryBackOffWaitMinimum {minimum:g} s x 2^RetryBackOffRepeatTimes {times} "
                                 f"is above {MAX_BACKOFF_S} s")
        dm.bind("OCPPCommCtrlr", "RetryBackOffWaitMinimum", lambda: b.wait_minimum_s, setter(b, "wait_minimum_s"),
                check=lambda v: longest(v, b.repeat_times))
        dm.bind("OCPPCommCtrlr", "RetryBackOffRandomRange", lambda: b.random_range_s, setter(b, "random_range_s"))
        dm.bind("OCPPCommCtrlr", "RetryBackOffRepeatTimes", lambda: b.repeat_times, setter(b, "repeat_times", int),
                check=lambda v: longest(b.wait_minimum_s, v))
        dm.bind("OCPPCommCtrlr", "MessageTimeout", lambda: int(self.response_timeout), instance="Default")
        dm.bind("SecurityCtrlr", "SecurityProfile", lambda: self.ctx.security.profile)
        dm.bind("ChargingStation", "Model", lambda: MODEL)
        dm.bind("ChargingStation", "VendorName", lambda: VENDOR)
        dm.bind("ChargingStation", "FirmwareVersion", lambda: (ctl.fw if ctl is not None else None) or "unknown")
        dm.bind("ChargingStation", "AvailabilityState", a.current_status)
        dm.bind("ChargingStation", "Available", lambda: a.available)
        dm.bind("ChargingStation", "SupplyPhases", lambda: int(getattr(ctl, "phases", 1) or 1))
        ping = dm.vars[("OCPPCommCtrlr", None, "WebSocketPingInterval", None)]
        dm.bind("OCPPCommCtrlr", "WebSocketPingInterval", lambda: dm.stored(ping), self._set_ping_interval,
                persistent=True)
        dm.bind("ClockCtrlr", "DateTime", lambda: utcnow().isoformat(timespec="seconds").replace("+00:00", "Z"))

    def _set_ping_interval(self, value):
        dm = self.ctx.device_model
        dm.store(dm.vars[("OCPPCommCtrlr", None, "WebSocketPingInterval", None)], value)
        self._ping_changed.set()     # the keepalive of this session takes it at once

    def ping_interval(self):
        return self.ctx.device_model.typed("OCPPCommCtrlr", "WebSocketPingInterval")

    def pong_timeout(self):
        return max(0.5, min(float(self.ping_interval() or PONG_TIMEOUT_MAX_S), PONG_TIMEOUT_MAX_S))

    def _link_dead(self):
        self.dead_links += 1
        self.dead_link_at = asyncio.get_running_loop().time()
        self.ctx.event("V2G-400", f"CSMS link dead: no pong within {self.pong_timeout():g} s of a ping "
                       f"(WebSocketPingInterval {self.ping_interval()} s); reconnecting")

    # ------------------------------------------------------------------ for the service

    @property
    def connected(self):
        """Set while a session with an accepted boot runs."""
        return self.ctx.connected

    @property
    def version(self):
        return self.ctx.version

    @property
    def security(self):
        return self.ctx.security

    @property
    def available(self):
        return self.availability.available

    @property
    def firmware_busy(self):
        return self.firmware.busy

    def on_sample(self, s, now_mono):
        """One telemetry sample from the controller (the service calls this for each)."""
        self.transactions.on_sample(s, now_mono)

    async def controller_up(self):
        await self.availability.controller_up()

    def firmware_changed(self, version):
        self.provisioning.firmware_changed(version)

    def reconnect(self, reason="RemoteReset"):
        """End the CSMS session and boot again with `reason`."""
        self.provisioning.boot_reason = reason
        self._reconnect.set()

    # ------------------------------------------------------------------ background loops

    # ------------------------------------------------------------------ the CSMS session

    async def run(self):
        self.security_events.raise_event("StartupOfTheDevice", "the charging station gateway started")
        self.loops.supervise()
        try:
            while True:
                try:
                    await self._session()
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    log.info("%s: CSMS session ended: %s", self.id, e)
                self.ctx.connected.clear()
                self.ctx.cp = None
                self.loops.supervise()
                if self._reconnect.is_set():
                    self._reconnect.clear()
                    continue
                wait = self.backoff.next()
                self.ctx.event("INFO", f"CSMS unreachable, retrying in {wait:.1f} s")
                await asyncio.sleep(wait)
        finally:
            await self.loops.stop()

    async def _session(self):
        ctx, security = self.ctx, self.ctx.security
        try:
            ws = await websockets.connect(
                self.url, subprotocols=self.subprotocols,
                additional_headers=security.headers(self.id),
                ssl=security.ssl_context(), open_timeout=self.handshake_timeout_s,
                ping_interval=None, max_size=2 ** 20)
        except asyncio.TimeoutError:
            ctx.event("V2G-140", "ERR_V2G_HANDSHAKE_TIMEOUT: CSMS {} did not complete the "
                      "WebSocket handshake within {:g} s".format(self.url, self.handshake_timeout_s))
            raise
        except (OSError, websockets.exceptions.WebSocketException) as e:
            ctx.event("INFO", f"CSMS {self.url} connection failed: {e}")
            status = getattr(getattr(e, "response", None), "status_code", None)
            if status in (401, 403):
                self.security_events.raise_event("FailedToAuthenticateAtCsms", f"HTTP {status} from the CSMS")
            raise
        async with ws:
            if ws.subprotocol == "ocpp1.6" and self.v16 is not None:
                await self.v16(ws, self.backoff.reset)
                return
            ctx.version = VERSIONS.get(ws.subprotocol)
            if ctx.version is None:
                ctx.event("V2G-400", f"CSMS accepted no OCPP version we offer ({', '.join(self.subprotocols)})")
                raise ConnectionError("no common OCPP version")
            ctx.count("connects")
            cp = ctx.cp = Connection(self.id, ws, ctx.version, self.routes, response_timeout=self.response_timeout)
            reader = asyncio.ensure_future(cp.start())
            # WebSocket ping/pong at WebSocketPingInterval from the first frame on: a boot sent
            # into a silently dropped link must not wait for the response timeout either
            pinger = asyncio.ensure_future(keepalive(ws, self.ping_interval, self.pong_timeout, self._link_dead,
                                                     self._ping_changed))
            try:
                await self.provisioning.boot()
                self.backoff.reset()
                ctx.event("INFO", f"connected to {self.url} with OCPP {ctx.version}, "
                          f"heartbeat {self.provisioning.heartbeat_s} s")
                ctx.connected.set()
                await self.availability.send_status(force=True)
                self.transactions.kick()
                self.security_events.flush()
                self.loops.supervise()
                hb = asyncio.ensure_future(self.provisioning.heartbeats())
                rc = asyncio.ensure_future(self._reconnect.wait())
                try:
                    done, _ = await asyncio.wait([reader, rc], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for t in (hb, rc):
                        t.cancel()
                    await asyncio.gather(hb, rc, return_exceptions=True)
                if reader in done and reader.exception():
                    raise reader.exception()
            finally:
                ctx.connected.clear()
                reader.cancel()
                pinger.cancel()
                await asyncio.gather(reader, pinger, return_exceptions=True)
