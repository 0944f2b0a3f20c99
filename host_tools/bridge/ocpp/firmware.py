"""L FirmwareManagement: UpdateFirmware with a signed bundle the gateway fetches and pushes
to the controller (`ctl.fota`), reported with FirmwareStatusNotification. One update at a
time: a push to the controller cannot be stopped half way."""

import logging

from host_tools.bridge.ocpp.connection import after, on
from host_tools.bridge.ocpp.context import status_info

log = logging.getLogger(__name__)


class Firmware:
    def __init__(self, ctx, allow_file_updates=False, security_events=None):
        self.ctx = ctx
        self.security_events = security_events
        self.allow_file_updates = allow_file_updates
        self.status = "Idle"        # the last FirmwareStatusNotification status
        self._busy = False

    @property
    def busy(self):
        """An update from the CSMS is being fetched or pushed."""
        return self._busy

    @on("UpdateFirmware")
    def on_update_firmware(self, request_id, firmware, **_):
        ctl = self.ctx.ctl
        if ctl.fota is None:
            return {"status": "Rejected", "statusInfo": status_info(
                "NotSupported", "signed updates are not available on this gateway yet")}
        if self._busy:
            # OCPP 2.0.1 L01.FR.24: an update in progress that cannot be cancelled -> Rejected
            # (a push to the controller cannot be stopped half way)
            return {"status": "Rejected", "statusInfo": status_info(
                "InProgress", f"an update is already in progress (status {self.status})")}
        if getattr(ctl, "local_update_running", lambda: False)():
            # a local `v2g fota` through the bridge's local link: two pushes would undo each other
            return {"status": "Rejected", "statusInfo": status_info(
                "InProgress", "a local update (v2g fota through the local link) is being pushed")}
        location = str(firmware.get("location", ""))
        scheme = location.split(":", 1)[0].lower() if ":" in location else ""
        allowed = ("http", "https", "file") if self.allow_file_updates else ("http", "https")
        if scheme not in allowed:
            why = (f"firmware location {scheme or location!r}:// is not allowed ({', '.join(allowed)}"
                   f"{'' if self.allow_file_updates else '; file:// needs --allow-file-updates'})")
            self.ctx.event("V2G-400", f"UpdateFirmware {request_id}: {why}")
            return {"status": "Rejected", "statusInfo": status_info("InvalidURL", why)}
        self._busy = True    # set here: a second request may arrive before the after hook runs
        return {"status": "Accepted"}

    @after("UpdateFirmware")
    async def after_update_firmware(self, result, request_id, firmware, **_):
        if result.get("status") != "Accepted":
            return

        async def report(status):
            self.status = status
            await self.ctx.call("FirmwareStatusNotification", {"status": status, "requestId": request_id})
            if status == "InvalidSignature" and self.security_events is not None:
                # L01.FR.03: a bad signature is also a security event
                self.security_events.raise_event("InvalidFirmwareSignature",
                                                 f"UpdateFirmware {request_id}: {firmware.get('location')}")

        try:
            await self.ctx.ctl.fota(firmware, report)
        finally:
            self._busy = False

    async def notify_status(self):
        await self.ctx.call("FirmwareStatusNotification", {"status": self.status})
