"""N Diagnostics: GetLog (the controller's diagnostic report and event log plus the
bridge's view, uploaded by HTTP PUT and reported with LogStatusNotification) and
F TriggerMessage (the station sends the asked message again)."""

import asyncio
import json
import logging
import urllib.request

from host_tools.bridge.ocpp.connection import after, on
from host_tools.bridge.ocpp.context import status_info
from host_tools.bridge.ocpp.transactions import meter_value

log = logging.getLogger(__name__)

TRIGGERABLE = ("BootNotification", "Heartbeat", "StatusNotification", "MeterValues",
               "TransactionEvent", "FirmwareStatusNotification", "LogStatusNotification")


class Diagnostics:
    def __init__(self, ctx, provisioning, availability, transactions, firmware):
        self.ctx = ctx
        self.provisioning = provisioning
        self.availability = availability
        self.transactions = transactions
        self.firmware = firmware

    # ------------------------------------------------------------------ GetLog

    @on("GetLog")
    def on_get_log(self, log, log_type, request_id, **_):  # noqa: A002
        if log_type != "DiagnosticsLog":
            return {"status": "Rejected", "statusInfo": status_info("UnsupportedLogType", log_type)}
        scheme = str(log.get("remote_location", "")).split(":", 1)[0].lower()
        security = self.ctx.security
        allowed = security.upload_schemes()
        if scheme not in allowed:
            why = (f"remoteLocation {scheme}:// refused: security profile {security.profile} "
                   f"uploads over {' or '.join(allowed)} only")
            self.ctx.event("V2G-400", f"GetLog {request_id}: {why}")
            return {"status": "Rejected", "statusInfo": status_info("InvalidURL", why)}
        return {"status": "Accepted", "filename": f"{self.ctx.id}-diagnostics-{request_id}.json"}

    @after("GetLog")
    async def after_get_log(self, result, log, log_type, request_id, **_):  # noqa: A002
        if result.get("status") != "Accepted":
            return
        ctx = self.ctx
        await ctx.call("LogStatusNotification", {"status": "Uploading", "requestId": request_id})
        try:
            report = await ctx.ctl.diagnostic_report()
            report["bridge"] = {"station_id": ctx.id, "ocpp": ctx.version, "counters": ctx.counters,
                                "queued": len(self.transactions.queue), "transaction": self.transactions.tx}
            body = json.dumps(report, indent=1, default=str).encode()
            url = log["remote_location"].rstrip("/") + "/" + result["filename"]
            await asyncio.get_running_loop().run_in_executor(None, _http_put, url, body)
            status = "Uploaded"
            ctx.event("INFO", f"diagnostic report ({len(body)} bytes) uploaded to {url}")
        except Exception as e:   # any failure is reported to the CSMS, not raised
            status = "UploadFailure"
            ctx.event("INFO", f"diagnostic report upload failed: {e}")
        await ctx.call("LogStatusNotification", {"status": status, "requestId": request_id})

    # ------------------------------------------------------------------ TriggerMessage

    @on("TriggerMessage")
    def on_trigger_message(self, requested_message, evse=None, **_):
        if requested_message not in TRIGGERABLE:
            return {"status": "NotImplemented"}
        if requested_message == "TransactionEvent" and not self.transactions.running:
            return {"status": "Rejected", "statusInfo": status_info("TxNotFound")}
        return {"status": "Accepted"}

    @after("TriggerMessage")
    async def after_trigger_message(self, result, requested_message, **_):
        if result.get("status") != "Accepted":
            return
        ctx = self.ctx
        s = ctx.ctl.sample or {}
        if requested_message == "BootNotification":
            await self.provisioning.triggered_boot()
        elif requested_message == "Heartbeat":
            await ctx.call("Heartbeat", {})
        elif requested_message == "StatusNotification":
            await self.availability.send_status(force=True)
        elif requested_message == "MeterValues":
            await ctx.call("MeterValues", {"evseId": 1, "meterValue": [meter_value(s, "Trigger")]})
        elif requested_message == "TransactionEvent":
            self.transactions.tx_event("Updated", "Trigger", s)
        elif requested_message == "FirmwareStatusNotification":
            await self.firmware.notify_status()
        elif requested_message == "LogStatusNotification":
            await ctx.call("LogStatusNotification", {"status": "Idle"})


def _http_put(url, body):
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"remoteLocation {url.split(':', 1)[0]}:// is not supported (http, https)")
    req = urllib.request.Request(url, data=body, method="PUT",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        if r.status >= 300:
            raise OSError(f"HTTP {r.status}")
