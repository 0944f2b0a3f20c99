"""GetDiagnostics -> DiagnosticsStatusNotification (the gateway's diagnostic report:
controller `diag` + `events` + the bridge's state, by HTTP PUT to `location`; under
security profiles 2 and 3 https only) and RemoteTrigger's TriggerMessage."""

import asyncio
import json
import logging
import urllib.request

from host_tools.bridge.ocpp16.connection import after, on

log = logging.getLogger(__name__)

TRIGGERABLE = ("BootNotification", "DiagnosticsStatusNotification", "FirmwareStatusNotification", "Heartbeat",
               "MeterValues", "StatusNotification")


def http_put(url, body):
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"location {url.split(':', 1)[0]}:// is not supported (http, https)")
    req = urllib.request.Request(url, data=body, method="PUT", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        if r.status >= 300:
            raise OSError(f"HTTP {r.status}")


class Diagnostics:
    def __init__(self, ctx, provisioning, availability, transactions, firmware):
        self.ctx = ctx
        self.provisioning = provisioning
        self.availability = availability
        self.transactions = transactions
        self.firmware = firmware
        self.status = "Idle"
        self._n = 0

    @on("GetDiagnostics")
    def on_get_diagnostics(self, location, **_):
        scheme = str(location).split(":", 1)[0].lower()
        allowed = self.ctx.security.upload_schemes()
        if scheme not in allowed:
            self.ctx.event("V2G-400", f"GetDiagnostics: location {scheme}:// refused: security profile "
                           f"{self.ctx.security.profile} uploads over {' or '.join(allowed)} only")
            return {}          # no fileName: nothing will be uploaded
        self._n += 1
        return {"fileName": f"{self.ctx.id}-diagnostics-{self._n}.json"[:255]}

    @after("GetDiagnostics")
    async def after_get_diagnostics(self, result, location, **_):
        name = result.get("fileName")
        if not name:
            return
        ctx = self.ctx
        await self._status("Uploading")
        try:
            report = await ctx.ctl.diagnostic_report()
            report["bridge"] = {"station_id": ctx.id, "ocpp": "1.6", "counters": ctx.counters,
                                "queued": len(self.transactions.queue), "transaction": self.transactions.tx}
            body = json.dumps(report, indent=1, default=str).encode()
            url = location.rstrip("/") + "/" + name
            await asyncio.get_running_loop().run_in_executor(None, http_put, url, body)
            ctx.event("INFO", f"diagnostic report ({len(body)} bytes) uploaded to {url}")
            await self._status("Uploaded")
        except Exception as e:  # noqa: BLE001 - any failure is reported to the CSMS, not raised
            ctx.event("INFO", f"diagnostic report upload failed: {e}")
            await self._status("UploadFailed")

    async def _status(self, status):
        self.status = status
        await self.ctx.call("DiagnosticsStatusNotification", {"status": status})

    @on("TriggerMessage")
    def on_trigger_message(self, requested_message, connector_id=None, **_):
        if requested_message not in TRIGGERABLE:
            return {"status": "NotImplemented"}
        if connector_id not in (None, 0, 1):
            return {"status": "Rejected"}
        return {"status": "Accepted"}

    @after("TriggerMessage")
    async def after_trigger_message(self, result, requested_message, **_):
        if result.get("status") != "Accepted":
            return
        if requested_message == "BootNotification":
            await self.ctx.call("BootNotification", self.provisioning.boot_payload())
        elif requested_message == "Heartbeat":
            await self.ctx.call("Heartbeat", {})
        elif requested_message == "StatusNotification":
            await self.availability.send_status(force=True)
        elif requested_message == "MeterValues":
            await self.transactions.meter_values_now()
        elif requested_message == "FirmwareStatusNotification":
            await self.firmware.notify_status()
        elif requested_message == "DiagnosticsStatusNotification":
            await self.ctx.call("DiagnosticsStatusNotification",
                                {"status": self.status})
