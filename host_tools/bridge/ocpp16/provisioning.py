"""Core: BootNotification, Heartbeat, Reset, DataTransfer.

Boot: Pending or Rejected -> asked again at the interval the CSMS gave; Accepted -> its
interval becomes HeartbeatInterval. Reset (Hard or Soft): the transaction ends (reason
HardReset/SoftReset), the controller's session is restarted, a SecurityEventNotification
ResetOrReboot goes out and the OCPP session is opened again (a new BootNotification)."""

import asyncio
import logging

from host_tools import link as hl
from host_tools.bridge.ocpp.context import MODEL, VENDOR
from host_tools.bridge.ocpp16.connection import after, on, stop_if_cancelled

log = logging.getLogger(__name__)


class Provisioning:
    def __init__(self, ctx, config, transactions, availability, security_events, reconnect):
        self.ctx = ctx
        self.config = config
        self.transactions = transactions
        self.availability = availability
        self.security_events = security_events
        self.reconnect = reconnect
        self.boot_status = None

    def boot_payload(self):
        ctl = self.ctx.ctl
        p = {"chargePointVendor": VENDOR[:20], "chargePointModel": MODEL[:20]}
        if getattr(ctl, "serial", None):
            p["chargePointSerialNumber"] = str(ctl.serial)[:25]
        if getattr(ctl, "fw", None):
            p["firmwareVersion"] = str(ctl.fw)[:50]
        return p

    async def boot(self):
        """BootNotification until Accepted (Pending/Rejected: again after the CSMS's interval)."""
        await self.ctx.ctl.wait_ready(10.0)   # the BootNotification carries the controller's firmware version
        while True:
            answer = await self.ctx.cp.call_raw("BootNotification", self.boot_payload())
            stop_if_cancelled()
            self.boot_status = answer["status"]
            interval = answer.get("interval", 0)
            if answer["status"] == "Accepted":
                if interval > 0:
                    self.config.set("HeartbeatInterval", interval)
                return
            wait = interval if interval > 0 else 30
            self.ctx.event("INFO", f"BootNotification {answer['status']}: again in {wait} s")
            await asyncio.sleep(wait)

    async def heartbeats(self):
        while True:
            await asyncio.sleep(self.config["HeartbeatInterval"])
            await self.ctx.call("Heartbeat", {})
            stop_if_cancelled()

    @on("Reset")
    def on_reset(self, type, **_):  # noqa: A002 - the OCPP field name
        return {"status": "Accepted"}

    @after("Reset")
    async def after_reset(self, result, type, **_):  # noqa: A002
        reason = "HardReset" if type == "Hard" else "SoftReset"
        ctl = self.ctx.ctl
        if self.transactions.running:
            try:
                await ctl.command("stop", {})
            except hl.LinkError as e:
                log.info("%s: stop before reset: %s", self.ctx.id, e)
            self.transactions.end_transaction(ctl.sample, reason)
        if self.availability.available:
            await self.availability.session_command("start", f"{type} reset")
        await self.security_events.notify("ResetOrReboot", f"{type} reset asked by the CSMS")
        self.ctx.event("INFO", f"{type} reset: the OCPP session starts again")
        self.reconnect()

    @on("DataTransfer")
    def on_data_transfer(self, vendor_id, message_id=None, **_):
        # no vendor extensions: OCPP 1.6 names this answer UnknownVendorId
        self.ctx.event("INFO", f"DataTransfer from vendor {vendor_id!r} ({message_id}) rejected: no vendor "
                       "extensions")
        return {"status": "UnknownVendorId"}
