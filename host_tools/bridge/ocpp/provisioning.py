"""B Provisioning: BootNotification (and its retry while the CSMS says Pending/Rejected),
Heartbeat at the CSMS's interval, the device model (GetVariables, SetVariables,
GetBaseReport -> NotifyReport) and Reset. The controller's settings are the variables of
component `V.COMPONENT`; a few read-only ones describe the station (see variables.py).
P DataTransfer is refused here too: this station has no vendor extensions."""

import asyncio
import logging

import websockets.exceptions

from host_tools import link as hl
from host_tools.bridge import profiles as prof
from host_tools.bridge import variables as V
from host_tools.bridge.ocpp.connection import CallRefused, OCPPError, after, on
from host_tools.bridge.ocpp.context import MODEL, VENDOR, status_info, utcnow

log = logging.getLogger(__name__)

REPORT_CHUNK = 20    # reportData entries per NotifyReport


class Provisioning:
    def __init__(self, ctx, availability, transactions, reconnect):
        self.ctx = ctx
        self.availability = availability
        self.transactions = transactions
        self._reconnect = reconnect         # fn(boot reason): end the CSMS session, boot again
        self.heartbeat_s = 60
        self.boot_reason = "PowerUp"
        self._reset_on_idle = False

    def _station(self, firmware_version):
        ctl = self.ctx.ctl
        return {"model": MODEL, "vendorName": VENDOR, "firmwareVersion": firmware_version,
                "serialNumber": ctl.serial or self.ctx.id}

    async def boot(self):
        """BootNotification until the CSMS accepts it; the answer sets the heartbeat interval."""
        ctl = self.ctx.ctl
        await ctl.wait_ready(10.0)   # the BootNotification carries the controller's firmware version
        while True:
            sample = ctl.sample or {}
            payload = {"reason": self.boot_reason, "chargingStation": self._station(ctl.fw or "unknown")}
            res = await self.ctx.cp.call_raw("BootNotification", payload)
            self.heartbeat_s = max(1, int(res.get("interval") or 60))
            if res["status"] == "Accepted":
                self.boot_reason = "PowerUp"
                return
            log.info("%s: boot %s, retry in %s s (sample %s)", self.ctx.id, res["status"], self.heartbeat_s,
                     sample.get("t_ms"))
            await asyncio.sleep(self.heartbeat_s)

    async def heartbeats(self):
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                await self.ctx.cp.call_raw("Heartbeat", {})
            except (asyncio.TimeoutError, CallRefused) as e:
                log.info("%s: heartbeat unanswered: %s", self.ctx.id, e)
            except asyncio.CancelledError:
                raise
            except websockets.exceptions.ConnectionClosed:
                return   # the session ends on its own; the next one starts new heartbeats
            except OCPPError as e:   # the CSMS's answer failed the schema: keep beating
                self.ctx.event("V2G-400", f"Heartbeat answer refused: {type(e).__name__}: {e}")
            except Exception as e:   # noqa: BLE001 - a bug must not stop the heartbeats
                log.exception("%s: heartbeat failed", self.ctx.id)
                self.ctx.event("V2G-400", f"Heartbeat failed: {type(e).__name__}: {e}")

    def firmware_changed(self, version):
        """The controller came back with other firmware (an update): tell the CSMS with a
        BootNotification of reason FirmwareUpdate, as a station does after installing."""
        if not self.ctx.connected.is_set():
            self.boot_reason = "FirmwareUpdate"   # sent with the next connection's boot
            return
        asyncio.get_running_loop().create_task(self.ctx.call("BootNotification", {
            "reason": "FirmwareUpdate", "chargingStation": self._station(version)}))

    async def triggered_boot(self):
        ctl = self.ctx.ctl
        await self.ctx.call("BootNotification", {"reason": "Triggered", "chargingStation": {
            "model": MODEL, "vendorName": VENDOR, "firmwareVersion": ctl.fw or "unknown"}})

    # ------------------------------------------------------------------ device model

    def readonly_vars(self):
        return {("OCPPCommCtrlr", "HeartbeatInterval"): self.heartbeat_s,
                ("SampledDataCtrlr", "TxUpdatedInterval"): int(self.transactions.meter_interval_s),
                ("ChargingStation", "Model"): MODEL,
                ("ChargingStation", "VendorName"): VENDOR,
                ("ChargingStation", "FirmwareVersion"): self.ctx.ctl.fw or "unknown",
                ("ChargingStation", "AvailabilityState"): self.availability.current_status()}

    @on("GetBaseReport")
    def on_get_base_report(self, request_id, report_base, **_):
        return {"status": "Accepted"}

    @after("GetBaseReport")
    async def after_get_base_report(self, result, request_id, report_base, **_):
        values = {}
        if report_base != "SummaryInventory":
            try:
                res = await self.ctx.ctl.command("config_get", {})
                values = res.data.get("values", {}) if res.ok else {}
            except hl.LinkError as e:
                log.warning("%s: config_get for the report failed: %s", self.ctx.id, e)
        entries = V.report_entries(values, self.readonly_vars())
        chunk = REPORT_CHUNK
        for i in range(0, len(entries), chunk):
            await self.ctx.call("NotifyReport", {
                "requestId": request_id, "generatedAt": prof.iso(utcnow()), "seqNo": i // chunk,
                "tbc": i + chunk < len(entries), "reportData": entries[i:i + chunk]})

    @on("GetVariables")
    async def on_get_variables(self, get_variable_data, **_):
        values = None
        out = []
        for item in get_variable_data:
            comp, var = item["component"], item["variable"]
            r = {"component": {"name": comp["name"]}, "variable": {"name": var["name"]}}
            atype = item.get("attribute_type", "Actual")
            if atype != "Actual":
                out.append({**r, "attributeStatus": "NotSupportedAttributeType", "attributeType": atype})
                continue
            ro = self.readonly_vars()
            if comp["name"] == V.COMPONENT:
                if values is None:
                    res = await self.ctx.ctl.command("config_get", {})
                    values = res.data.get("values", {}) if res.ok else {}
                if var["name"] in values:
                    out.append({**r, "attributeStatus": "Accepted",
                                "attributeValue": V.to_text(values[var["name"]])})
                else:
                    out.append({**r, "attributeStatus": "UnknownVariable"})
            elif (comp["name"], var["name"]) in ro:
                out.append({**r, "attributeStatus": "Accepted",
                            "attributeValue": V.to_text(ro[(comp["name"], var["name"])])})
            elif any(c == comp["name"] for c, _ in ro):
                out.append({**r, "attributeStatus": "UnknownVariable"})
            else:
                out.append({**r, "attributeStatus": "UnknownComponent"})
        return {"getVariableResult": out}

    @on("SetVariables")
    async def on_set_variables(self, set_variable_data, **_):
        ctl = self.ctx.ctl
        res = await ctl.command("config_get", {})
        values = res.data.get("values", {}) if res.ok else {}
        out = []
        for item in set_variable_data:
            comp, var = item["component"], item["variable"]
            r = {"component": {"name": comp["name"]}, "variable": {"name": var["name"]},
                 "attributeType": item.get("attribute_type", "Actual")}
            if comp["name"] != V.COMPONENT:
                known = any(c == comp["name"] for c, _ in self.readonly_vars())
                status = "Rejected" if known else "UnknownComponent"
                out.append({**r, "attributeStatus": status, **(
                    {"attributeStatusInfo": status_info("ReadOnly")} if known else {})})
                continue
            if var["name"] not in values:
                out.append({**r, "attributeStatus": "UnknownVariable"})
                continue
            if r["attributeType"] != "Actual":
                out.append({**r, "attributeStatus": "NotSupportedAttributeType"})
                continue
            try:
                v = V.from_text(item["attribute_value"], values[var["name"]])
            except ValueError as e:
                out.append({**r, "attributeStatus": "Rejected",
                            "attributeStatusInfo": status_info("InvalidValue", e)})
                self.ctx.event("V2G-400", f"SetVariables {var['name']}: {e}")
                continue
            cres = await ctl.command("config_set", {var["name"]: v})
            if cres.ok:
                values[var["name"]] = v
                out.append({**r, "attributeStatus": "Accepted"})
            else:
                self.ctx.event(cres.code or "V2G-400", f"SetVariables {var['name']}={v!r} refused: "
                               f"{cres.msg}")
                out.append({**r, "attributeStatus": "Rejected",
                            "attributeStatusInfo": status_info("InvalidValue", cres.msg)})
        return {"setVariableResult": out}

    # ------------------------------------------------------------------ Reset

    @on("Reset")
    def on_reset(self, type, evse_id=None, **_):  # noqa: A002 - the payload's name
        if evse_id not in (None, 0, 1):
            return {"status": "Rejected", "statusInfo": status_info("UnknownEvse", f"no EVSE {evse_id}")}
        if type == "OnIdle" and self.transactions.running:
            self._reset_on_idle = True
            return {"status": "Scheduled"}
        return {"status": "Accepted"}

    @after("Reset")
    async def after_reset(self, result, type, **_):  # noqa: A002
        if result.get("status") != "Accepted":
            return
        ctl = self.ctx.ctl
        self.ctx.event("INFO", f"Reset ({type}) asked by the CSMS: session stopped, reconnecting")
        try:
            await ctl.command("stop", {})
        except hl.LinkError as e:
            log.warning("%s: stop before reset failed: %s", self.ctx.id, e)
        self.transactions.end_transaction(ctl.sample, "ResetCommand", "ImmediateReset")
        await asyncio.sleep(0.2)   # let the Ended event leave before the socket closes
        self._reconnect("RemoteReset")
        if self.availability.stays_stopped:
            return    # an inoperative station stays stopped through a reset
        try:
            await ctl.command("start", {})
        except hl.LinkError as e:
            log.warning("%s: start after reset failed: %s", self.ctx.id, e)

    def transaction_ended(self, tx_id):
        """A Reset OnIdle that waited for the transaction happens now."""
        if self._reset_on_idle:
            self._reset_on_idle = False
            return self.after_reset({"status": "Accepted"}, "OnIdle")
        return None

    # ------------------------------------------------------------------ P DataTransfer

    @on("DataTransfer")
    def on_data_transfer(self, vendor_id, **_):
        return {"status": "Rejected", "statusInfo": status_info(
            "NoVendorExtensions", f"this station implements no DataTransfer extensions (vendorId {vendor_id})")}
