"""Core: StatusNotification and ChangeAvailability.

Connector 1 is the controller's; connector 0 is the station as a whole (sent at boot).
Inoperative is kept in `availability.json` across restarts of the bridge and stops the
controller's session whenever the controller (re)connects; while a transaction runs it is
Scheduled and applied when the transaction ends."""

import logging

from host_tools import link as hl
from host_tools.bridge.ocpp.context import utcnow
from host_tools.bridge.ocpp16.connection import on
from host_tools.bridge.ocpp16.transactions import PLUGGED, charging_status
from host_tools.bridge.profiles import iso
from host_tools.bridge.queue import read_json, write_json_atomic

log = logging.getLogger(__name__)

FAULTS = {"V2G-010": "OtherError", "V2G-011": "OtherError", "V2G-012": "OtherError"}


class Availability:
    def __init__(self, ctx, state_dir, transactions):
        self.ctx = ctx
        self.transactions = transactions
        self._file = state_dir / "availability.json"
        self.available = (read_json(self._file, {}) or {}).get("available", True)
        self.scheduled = None          # "Inoperative"/"Operative" waiting for the transaction to end
        self._last = None

    def status_of(self, s):
        """(status, errorCode, vendorErrorCode) of connector 1 from a controller sample."""
        s = s or {}
        for code in s.get("errors", []):
            if code in FAULTS:
                return "Faulted", FAULTS[code], code
        if not self.available:
            return "Unavailable", "NoError", None
        if self.transactions.running:
            return charging_status(s), "NoError", None
        if s.get("cp") in PLUGGED:
            return ("Finishing" if self.transactions.blocked_until_unplug else "Preparing"), "NoError", None
        return "Available", "NoError", None

    async def send_status(self, force=False):
        st = self.status_of(self.ctx.ctl.sample)
        if st == self._last and not force:
            return
        self._last = st
        if force:
            await self.ctx.call("StatusNotification", {"connectorId": 0, "errorCode": "NoError",
                                                       "status": "Available" if self.available else "Unavailable",
                                                       "timestamp": iso(utcnow())})
        p = {"connectorId": 1, "errorCode": st[1], "status": st[0], "timestamp": iso(utcnow())}
        if st[2]:
            p["vendorErrorCode"] = st[2]
        if await self.ctx.call("StatusNotification", p) is None:
            self._last = None        # not delivered: send it again at the next change or reconnect

    async def session_command(self, op, why):
        try:
            res = await self.ctx.ctl.command(op, {})
        except hl.LinkError as e:
            log.info("%s: %s %s: %s", self.ctx.id, op, why, e)
            return False
        if not res.ok:
            self.ctx.event("INFO", f"controller refused {op} ({why}): {res.code}: {res.msg}")
        return res.ok

    def _set(self, available):
        self.available = available
        write_json_atomic(self._file, {"available": available})

    async def controller_up(self):
        if not self.available:
            await self.session_command("stop", "station inoperative")

    async def apply(self, kind):
        self._set(kind == "Operative")
        await self.session_command("start" if self.available else "stop", f"ChangeAvailability {kind}")
        await self.send_status()

    def transaction_ended(self, _local):
        if self.scheduled is not None:
            kind, self.scheduled = self.scheduled, None
            return self.apply(kind)
        return None

    @on("ChangeAvailability")
    async def on_change_availability(self, connector_id, type, **_):  # noqa: A002 - the OCPP field name
        if connector_id not in (0, 1):
            return {"status": "Rejected"}
        if (type == "Operative") == self.available:
            return {"status": "Accepted"}
        if self.transactions.running and type == "Inoperative":
            self.scheduled = type
            return {"status": "Scheduled"}
        await self.apply(type)
        return {"status": "Accepted"}
