"""The charging station as a 1.6J CSMS sees it (charging only): one connector, one controller.

Made like the 2.0.1 station (host_tools.bridge.ocpp): one module per part of OCPP 1.6,
composed here; blocks share the same small context and call each other's public methods.

    connection      OCPP-J for 1.6 (the shared Connection with the 1.6 schemas), keep-alive
    configuration   Core: GetConfiguration, ChangeConfiguration (station keys + v2g_vars.json keys)
    provisioning    Core: BootNotification, Heartbeat, Reset, DataTransfer
    availability    Core: StatusNotification, ChangeAvailability
    transactions    Core: Authorize, Start/StopTransaction, MeterValues, RemoteStart/Stop; offline queue
    smart_charging  SmartCharging: Set/ClearChargingProfile, GetCompositeSchedule
    firmware        Security: SignedUpdateFirmware -> SignedFirmwareStatusNotification
    security        Security: SecurityEventNotification
    diagnostics     FirmwareManagement's GetDiagnostics; RemoteTrigger's TriggerMessage

The WebSocket is opened by the 2.x station's connect call, which offers `ocpp1.6` last;
when the CSMS picks it, `session(ws)` runs here on that socket.
"""

import asyncio
import logging

from host_tools.bridge.ocpp.context import StationContext
from host_tools.bridge.offline import Loops
from host_tools.bridge.ocpp16.availability import Availability
from host_tools.bridge.ocpp16.configuration import Configuration
from host_tools.bridge.ocpp16.connection import (SUBPROTOCOL, VERSION, Connection, keepalive, routes_of,
                                                 stop_if_cancelled)
from host_tools.bridge.ocpp16.diagnostics import Diagnostics
from host_tools.bridge.ocpp16.firmware import Firmware
from host_tools.bridge.ocpp16.provisioning import Provisioning
from host_tools.bridge.ocpp16.security import SecurityEvents
from host_tools.bridge.ocpp16.smart_charging import NO_DISCHARGE, NO_DISCHARGE_WHY, SmartCharging
from host_tools.bridge.ocpp16.transactions import Transactions

__all__ = ["NO_DISCHARGE", "NO_DISCHARGE_WHY", "SUBPROTOCOL", "VERSION", "Ocpp16Station"]

log = logging.getLogger(__name__)


class Ocpp16Station:
    def __init__(self, station_id, ctl, state_dir, clog, security, *, meter_interval_s=60.0,
                 response_timeout=30.0, allow_file_updates=False):
        self.id = station_id
        self.response_timeout = response_timeout
        state_dir.mkdir(parents=True, exist_ok=True)
        self.ctx = ctx = StationContext(station_id, ctl, clog, security)
        ctx.version = VERSION
        c = self.configuration = Configuration(ctx, state_dir, meter_interval_s)
        t = self.transactions = Transactions(ctx, state_dir, c)
        a = self.availability = Availability(ctx, state_dir, t)
        t.availability = a
        sc = self.smart_charging = SmartCharging(ctx, t, c)
        t.smart_charging = sc
        se = self.security_events = SecurityEvents(ctx)
        p = self.provisioning = Provisioning(ctx, c, t, a, se, self.reconnect)
        f = self.firmware = Firmware(ctx, se, allow_file_updates)
        d = self.diagnostics = Diagnostics(ctx, p, a, t, f)
        t.started.append(sc.transaction_started)
        t.ended += [sc.transaction_ended, a.transaction_ended]
        self.routes = routes_of(c, p, a, t, sc, f, d)
        self.loops = Loops(ctx, (("queue sender", t.queue_sender), ("profile ticker", sc.ticker)),
                           after_start=t.kick)     # a restarted sender looks at the queue at once
        self._end_session = asyncio.Event()

    # ------------------------------------------------------------------ for the service

    @property
    def connected(self):
        return self.ctx.connected

    @property
    def available(self):
        return self.availability.available

    @property
    def firmware_busy(self):
        return self.firmware.busy

    def on_sample(self, s, now_mono):
        self.transactions.on_sample(s, now_mono)

    async def controller_up(self):
        await self.availability.controller_up()
        await self.smart_charging.charge_only()

    def firmware_changed(self, version):
        """The controller runs new firmware: a new session announces it in its BootNotification."""
        self.ctx.event("INFO", f"controller firmware now {version}: new OCPP 1.6 session")
        self.reconnect()

    def reconnect(self):
        self._end_session.set()

    # ------------------------------------------------------------------ the CSMS session

    async def session(self, ws, on_booted=None):
        """One OCPP 1.6 session on an open WebSocket the CSMS accepted with `ocpp1.6`; returns
        when it closes (or a Reset ends it). on_booted: called once the boot is Accepted."""
        ctx = self.ctx
        ctx.count("connects")
        self._end_session.clear()
        cp = ctx.cp = Connection(self.id, ws, VERSION, self.routes, response_timeout=self.response_timeout)
        reader = asyncio.ensure_future(cp.start())
        side = []
        try:
            await self.provisioning.boot()
            if on_booted is not None:
                on_booted()
            # the controller is charge-only before the session counts as connected
            await self.smart_charging.charge_only()
            ctx.event("INFO", f"connected with OCPP 1.6, heartbeat {self.configuration['HeartbeatInterval']} s")
            ctx.connected.set()
            self.loops.supervise()
            await self.availability.send_status(force=True)
            self.transactions.kick()
            side = [asyncio.ensure_future(self.provisioning.heartbeats()),
                    asyncio.ensure_future(keepalive(ws, lambda: self.configuration["WebSocketPingInterval"],
                                                    lambda why: ctx.event("INFO", f"CSMS link dead: {why}"))),
                    asyncio.ensure_future(self._end_session.wait())]
            stop_if_cancelled()     # a cancel dropped by a CALL above (see connection.stop_if_cancelled)
            done, _ = await asyncio.wait([reader, side[-1]], return_when=asyncio.FIRST_COMPLETED)
            if reader in done and reader.exception():
                raise reader.exception()
        finally:
            ctx.connected.clear()
            ctx.cp = None
            # a CALL in flight on this socket would wait its whole response timeout for an answer
            # that cannot come: the sender stops here (its message stays queued) and the next
            # session starts it again
            sender = self.loops.tasks.pop("queue sender", None)
            for t in side + [reader] + ([sender] if sender else []):
                t.cancel()
            await asyncio.gather(*side, reader, *([sender] if sender else []), return_exceptions=True)
