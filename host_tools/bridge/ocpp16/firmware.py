"""Security extension: SignedUpdateFirmware -> SignedFirmwareStatusNotification, the
signed FOTA path of the gateway (`ctl.fota`: fetch the signed bundle, push it over the host
link, the controller checks the signature). An invalid signature is also a security event
(InvalidFirmwareSignature); an installed update is FirmwareUpdated. One update at a time."""

import logging

from host_tools.bridge.ocpp16.connection import after, on

log = logging.getLogger(__name__)


class Firmware:
    def __init__(self, ctx, security_events, allow_file_updates=False):
        self.ctx = ctx
        self.security_events = security_events
        self.allow_file_updates = allow_file_updates
        self.status = "Idle"
        self._busy = False

    @property
    def busy(self):
        return self._busy

    @on("SignedUpdateFirmware")
    def on_signed_update_firmware(self, request_id, firmware, **_):
        ctl = self.ctx.ctl
        if ctl.fota is None or self._busy or getattr(ctl, "local_update_running", lambda: False)():
            return {"status": "Rejected"}
        location = str(firmware.get("location", ""))
        scheme = location.split(":", 1)[0].lower() if ":" in location else ""
        allowed = ("http", "https", "file") if self.allow_file_updates else ("http", "https")
        if scheme not in allowed:
            self.ctx.event("V2G-400", f"SignedUpdateFirmware {request_id}: location {scheme or location!r} "
                           f"not allowed ({', '.join(allowed)})")
            return {"status": "Rejected"}
        self._busy = True
        return {"status": "Accepted"}

    @after("SignedUpdateFirmware")
    async def after_signed_update_firmware(self, result, request_id, firmware, **_):
        if result.get("status") != "Accepted":
            return

        async def report(status):
            self.status = status
            await self.ctx.call("SignedFirmwareStatusNotification", {"status": status, "requestId": request_id})
            if status == "InvalidSignature":
                await self.security_events.notify("InvalidFirmwareSignature", f"request {request_id}")
            elif status == "Installed":
                await self.security_events.notify("FirmwareUpdated", f"request {request_id}")

        try:
            await self.ctx.ctl.fota(firmware, report)
        finally:
            self._busy = False

    async def notify_status(self):
        """FirmwareStatusNotification (TriggerMessage): the 1.6 core statuses only."""
        core = ("Downloaded", "DownloadFailed", "Downloading", "Idle", "InstallationFailed", "Installing",
                "Installed")
        await self.ctx.call("FirmwareStatusNotification", {"status": self.status if self.status in core else "Idle"})
