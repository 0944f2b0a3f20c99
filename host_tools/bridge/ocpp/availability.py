"""G Availability: the connector's status towards the CSMS (StatusNotification) and
whether the station may charge at all (ChangeAvailability).

Inoperative is kept on disk: it outlives a restart of the bridge (OCPP G03.FR.07), and a
controller that comes back (a new board, a reflash) is told again to keep its session
stopped. Inoperative during a transaction is Scheduled and applied when it ends."""

import logging

from host_tools import link as hl
from host_tools.bridge import profiles as prof
from host_tools.bridge.ocpp.connection import on
from host_tools.bridge.ocpp.context import status_info, utcnow
from host_tools.bridge.queue import read_json, write_json_atomic

log = logging.getLogger(__name__)

FAULT_CODES = ("V2G-010", "V2G-011", "V2G-012")
PLUGGED = ("B", "C", "D")


class Availability:
    def __init__(self, ctx, state_dir, transaction_running):
        self.ctx = ctx
        self._file = state_dir / "availability.json"
        self.available = (read_json(self._file, {}) or {}).get("operative", True) is not False
        self.pending_inoperative = False
        self.connector_status = None
        self._transaction_running = transaction_running

    @property
    def stays_stopped(self):
        """Inoperative now or once the transaction ends: no session may start."""
        return not self.available or self.pending_inoperative

    def current_status(self):
        s = self.ctx.ctl.sample or {}
        if not self.available:
            return "Unavailable"
        if s.get("mode") == "fault" or any(c in FAULT_CODES for c in s.get("errors", ())):
            return "Faulted"
        if s.get("cp") in PLUGGED:
            return "Occupied"
        return "Available"

    async def send_status(self, force=False):
        st = self.current_status()
        if st == self.connector_status and not force:
            return
        self.connector_status = st
        await self.ctx.call("StatusNotification", {"timestamp": prof.iso(utcnow()), "connectorStatus": st,
                                                   "evseId": 1, "connectorId": 1})

    @on("ChangeAvailability")
    async def on_change_availability(self, operational_status, evse=None, **_):
        if evse and evse.get("id") not in (0, 1):
            return {"status": "Rejected", "statusInfo": status_info("UnknownEvse", str(evse))}
        want = operational_status == "Operative"
        if want:
            self.pending_inoperative = False   # a later Operative cancels a scheduled Inoperative
        if not want and self._transaction_running():
            self.pending_inoperative = True
            return {"status": "Scheduled"}
        ok = await self.set_available(want)
        return {"status": "Accepted" if ok else "Rejected"}

    async def set_available(self, want):
        try:
            res = await self.ctx.ctl.command("start" if want else "stop", {})
        except hl.LinkError as e:
            log.warning("%s: availability not applied: %s", self.ctx.id, e)
            return False
        if res.ok:
            self.available = want
            write_json_atomic(self._file, {"operative": want})
            self.ctx.event("INFO", "station {} (ChangeAvailability): controller says: {}".format(
                "operative" if want else "inoperative", res.msg))
            await self.send_status()
        return res.ok

    def transaction_ended(self, tx_id):
        """A scheduled Inoperative takes effect now."""
        if self.pending_inoperative:
            self.pending_inoperative = False
            self.available = False    # at once: a reset right after must not start the session again
            return self.set_available(False)
        return None

    async def session_command(self, op, why):
        """start or stop on the controller; a refusal goes to central_system.log, a lost link is a warning."""
        try:
            res = await self.ctx.ctl.command(op, {})
        except hl.LinkError as e:
            log.warning("%s: %s (%s) failed: %s", self.ctx.id, op, why, e)
            return
        if not res.ok:
            self.ctx.event(res.code or "V2G-400", f"{op} ({why}) refused: {res.msg}")

    async def controller_up(self):
        """The controller (re)connected: an inoperative station keeps its session stopped,
        whatever the controller was doing before (a new board, a reflash)."""
        if not self.available:
            await self.session_command("stop", "the station is inoperative")
