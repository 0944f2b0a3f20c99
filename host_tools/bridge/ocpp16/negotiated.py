"""The OCPP station the service talks to: `ocpp2.1, ocpp2.0.1, ocpp1.6` offered in one
WebSocket handshake (`--ocpp 2.0.1`: 2.0.1 and 1.6; `--ocpp 1.6`: 1.6 only), and the version
the CSMS picks is spoken: 2.x by host_tools.bridge.ocpp, 1.6 by this package.

Between sessions the station keeps to the version of the last one (kept in
`STATE/<station>/ocpp/version.json`): telemetry makes transactions in that version's
offline queue, so what happens while the CSMS is away is replayed in the language it
speaks. While that version is 1.6 the controller is charge-only (a discharge limit of 0
from the CSMS) and the app's status says why (V2G-302)."""

import asyncio
import logging
from pathlib import Path

from host_tools.bridge.ocpp import OcppStation, Security
from host_tools.bridge.ocpp16 import VERSION, Ocpp16Station
from host_tools.bridge.queue import read_json, write_json_atomic

log = logging.getLogger(__name__)


class NegotiatedStation:
    def __init__(self, station_id, url, ctl, state_dir, clog, *, max_version="2.1", security=None,
                 backoff=None, meter_interval_s=60.0, response_timeout=30.0, handshake_timeout_s=10.0,
                 allow_file_updates=False):
        state_dir = Path(state_dir)
        security = security or Security(0)
        self.ctl = ctl
        self.v2 = OcppStation(station_id, url, ctl, state_dir, clog, max_version=max_version, security=security,
                              backoff=backoff, meter_interval_s=meter_interval_s, response_timeout=response_timeout,
                              handshake_timeout_s=handshake_timeout_s, allow_file_updates=allow_file_updates,
                              v16=self._session16)
        self.v16 = Ocpp16Station(station_id, ctl, state_dir / "v16", clog, security,
                                 meter_interval_s=meter_interval_s, response_timeout=response_timeout,
                                 allow_file_updates=allow_file_updates)
        self._file = state_dir / "version.json"
        self.only16 = max_version == VERSION
        self.speaks16 = self.only16 or (read_json(self._file, {}) or {}).get("version") == VERSION

    @property
    def id(self):
        return self.v2.id

    @property
    def subprotocols(self):
        return self.v2.subprotocols

    @property
    def active(self):
        """The station of the version spoken now (or, between sessions, last)."""
        if self.speaks16 and not self.only16 and self.v2.connected.is_set():
            self._switch(False)          # the CSMS picked 2.x this time
        return self.v16 if self.speaks16 else self.v2

    def _switch(self, to16):
        self.speaks16 = to16
        # fsynced off the loop: a site gateway's stations all switch as they first connect
        asyncio.get_running_loop().run_in_executor(None, write_json_atomic, self._file,
                                                   {"version": VERSION if to16 else self.v2.version})
        self.v16.ctx.event("INFO", "the CSMS speaks OCPP " + (VERSION if to16 else str(self.v2.version)))
        if not to16:
            # the 1.6 charge-only limit goes; the 2.x profiles (if any) take over
            asyncio.ensure_future(self._lift_charge_only())

    async def _lift_charge_only(self):
        try:
            await self.ctl.apply_csms_plan(None)
        except Exception as e:  # noqa: BLE001 - the controller may be away; its next link starts clean
            log.info("%s: CSMS limits not lifted: %s", self.id, e)

    async def _session16(self, ws, booted):
        if not self.speaks16:
            self._switch(True)
        await self.v16.session(ws, booted)

    # ------------------------------------------------------------------ what the service uses

    @property
    def connected(self):
        return self.active.connected

    @property
    def version(self):
        return VERSION if self.active is self.v16 else self.v2.version

    @property
    def security(self):
        return self.v2.security

    @property
    def available(self):
        return self.active.available

    @property
    def firmware_busy(self):
        return self.v2.firmware_busy or self.v16.firmware_busy

    def on_sample(self, s, now_mono):
        self.active.on_sample(s, now_mono)

    async def controller_up(self):
        await self.active.controller_up()

    def firmware_changed(self, version):
        self.active.firmware_changed(version)

    async def run(self):
        try:
            await self.v2.run()
        finally:
            await self.v16.loops.stop()
