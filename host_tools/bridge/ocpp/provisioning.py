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
from host_tools.bridge.ocpp.device_model import ITEMS_PER_MESSAGE

log = logging.getLogger(__name__)



class Provisioning:
    def __init__(self, ctx, availability, transactions, reconnect):
        self.ctx = ctx
        self.availability = availability
        self.transactions = transactions
        self._reconnect = reconnect         # fn(boot reason): end the CSMS session, boot again
        self.heartbeat_s = 60
        self.boot_reason = "PowerUp"
        self._reset_on_idle = False
        self._report_rows = {}              # GetReport requestId -> entries, until NotifyReport
        self.security_events = None         # SecurityEvents (set by the station)

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
        if self.security_events is not None:
            self.security_events.raise_event("FirmwareUpdated", f"controller firmware now {version}")
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

    async def _controller_values(self):
        """The controller's settings (component V2GController); {} while it is away."""
        try:
            res = await self.ctx.ctl.command("config_get", {})
        except hl.LinkError as e:
            log.warning("%s: config_get failed: %s", self.ctx.id, e)
            return {}
        return res.data.get("values", {}) if res.ok else {}

    async def _entries(self, with_controller=True):
        """Every variable as a reportData entry: the controller's settings, then the standard ones."""
        dm = self.ctx.device_model
        values = await self._controller_values() if with_controller else {}
        return V.report_entries(values, {}) + [dm.report_entry(v) for _, v in sorted(
            dm.vars.items(), key=lambda kv: tuple(x or "" for x in kv[0]))]

    async def _send_report(self, request_id, entries):
        chunk = ITEMS_PER_MESSAGE
        for i in range(0, max(len(entries), 1), chunk):
            await self.ctx.call("NotifyReport", {
                "requestId": request_id, "generatedAt": prof.iso(utcnow()), "seqNo": i // chunk,
                "tbc": i + chunk < len(entries), "reportData": entries[i:i + chunk]})

    @on("GetBaseReport")
    def on_get_base_report(self, request_id, report_base, **_):
        return {"status": "Accepted"}

    @after("GetBaseReport")
    async def after_get_base_report(self, result, request_id, report_base, **_):
        entries = await self._entries(report_base != "SummaryInventory")
        if report_base == "ConfigurationInventory":
            # B07: what the operator can set, and nothing else
            entries = [e for e in entries if e["variableAttribute"][0]["mutability"] != "ReadOnly"]
        elif report_base == "SummaryInventory":
            entries = [e for e in entries if e["component"]["name"] == "ChargingStation"]
        await self._send_report(request_id, entries)

    @on("GetReport")
    async def on_get_report(self, request_id, component_variable=None, component_criteria=None, **_):
        if component_variable and len(component_variable) > ITEMS_PER_MESSAGE:
            return {"status": "Rejected", "statusInfo": status_info(
                "TooManyElements", f"componentVariable: {len(component_variable)} entries, "
                f"ItemsPerMessage[GetReport] is {ITEMS_PER_MESSAGE}")}
        entries = self._select(await self._entries(), component_variable, component_criteria)
        self._report_rows[request_id] = entries
        return {"status": "Accepted" if entries else "EmptyResultSet"}

    @after("GetReport")
    async def after_get_report(self, result, request_id, **_):
        entries = self._report_rows.pop(request_id, [])
        if result.get("status") == "Accepted":
            await self._send_report(request_id, entries)

    @staticmethod
    def _select(entries, component_variable, component_criteria):
        """B08: the entries named by componentVariable (a component alone: all its variables)
        that meet componentCriteria. Every component of this station is Active, Available and
        Enabled and has no Problem."""
        if component_criteria and not set(component_criteria) & {"Active", "Available", "Enabled"}:
            return []
        if not component_variable:
            return entries
        out = []
        for e in entries:
            for cv in component_variable:
                c, var = cv["component"], cv.get("variable")
                if c["name"] != e["component"]["name"] or c.get("instance") not in (None, e["component"].get("instance")):
                    continue
                if var is not None and (var["name"] != e["variable"]["name"]
                                        or var.get("instance") not in (None, e["variable"].get("instance"))):
                    continue
                out.append(e)
                break
        return out

    @on("GetVariables")
    async def on_get_variables(self, get_variable_data, **_):
        dm = self.ctx.device_model
        values = None
        out = []
        for i, item in enumerate(get_variable_data):
            comp, var = item["component"], item["variable"]
            atype = item.get("attribute_type", "Actual")
            # B06.FR.02/.11: the answer names the attribute type asked for (Actual when none was)
            r = {"component": _echo(comp), "variable": _echo(var), "attributeType": atype}
            if i >= ITEMS_PER_MESSAGE:
                # TC_B_08_CS: what is beyond ItemsPerMessage[GetVariables] is Rejected, not read
                out.append({**r, "attributeStatus": "Rejected", "attributeStatusInfo": status_info(
                    "TooManyElements", f"ItemsPerMessage[GetVariables] is {ITEMS_PER_MESSAGE}")})
                continue
            if comp["name"] == V.COMPONENT and not comp.get("instance") and not var.get("instance"):
                if values is None:
                    values = await self._controller_values()
                if var["name"] not in values:
                    out.append({**r, "attributeStatus": "UnknownVariable"})
                elif atype != "Actual":
                    out.append({**r, "attributeStatus": "NotSupportedAttributeType"})
                else:
                    out.append({**r, "attributeStatus": "Accepted",
                                "attributeValue": V.to_text(values[var["name"]])[:2500]})
                continue
            status, v = dm.find(comp["name"], var["name"], var.get("instance"))
            if comp.get("instance") and v is not None:
                status, v = "UnknownComponent", None
            if v is None:
                out.append({**r, "attributeStatus": status})
            elif atype != "Actual":
                out.append({**r, "attributeStatus": "NotSupportedAttributeType"})
            elif v.mutability == "WriteOnly":
                out.append({**r, "attributeStatus": "Rejected", "attributeStatusInfo": status_info("WriteOnly")})
            else:
                out.append({**r, "attributeStatus": "Accepted", "attributeValue": dm.text(v)[:2500]})
        return {"getVariableResult": out}

    @on("SetVariables")
    async def on_set_variables(self, set_variable_data, **_):
        ctl, dm = self.ctx.ctl, self.ctx.device_model
        values = None
        out = []
        for i, item in enumerate(set_variable_data):
            comp, var = item["component"], item["variable"]
            r = {"component": _echo(comp), "variable": _echo(var),
                 "attributeType": item.get("attribute_type", "Actual")}
            if i >= ITEMS_PER_MESSAGE:
                # as GetVariables: beyond ItemsPerMessage[SetVariables] is Rejected and not set
                out.append({**r, "attributeStatus": "Rejected", "attributeStatusInfo": status_info(
                    "TooManyElements", f"ItemsPerMessage[SetVariables] is {ITEMS_PER_MESSAGE}")})
                continue
            if comp["name"] != V.COMPONENT or comp.get("instance") or var.get("instance"):
                status, v = dm.find(comp["name"], var["name"], var.get("instance"))
                if comp.get("instance") and v is not None:
                    status, v = "UnknownComponent", None
                if v is None:
                    out.append({**r, "attributeStatus": status})
                    continue
                if r["attributeType"] != "Actual":
                    out.append({**r, "attributeStatus": "NotSupportedAttributeType"})
                    continue
                status, why = dm.set_text(v, item["attribute_value"])
                if status == "Accepted":
                    out.append({**r, "attributeStatus": "Accepted"})
                    self._setting_changed(v.component, v.name, item["attribute_value"])
                else:
                    reason = "ReadOnly" if why == "ReadOnly" else "InvalidValue"
                    out.append({**r, "attributeStatus": "Rejected", "attributeStatusInfo": status_info(reason, why)})
                    self.ctx.event("V2G-400", f"SetVariables {comp['name']}.{var['name']}: {why}")
                continue
            if values is None:
                values = await self._controller_values()
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
                self._setting_changed(V.COMPONENT, var["name"], item["attribute_value"])
            else:
                self.ctx.event(cres.code or "V2G-400", f"SetVariables {var['name']}={v!r} refused: "
                               f"{cres.msg}")
                out.append({**r, "attributeStatus": "Rejected",
                            "attributeStatusInfo": status_info("InvalidValue", cres.msg)})
        return {"setVariableResult": out}

    def _setting_changed(self, component, name, value):
        self.ctx.event("INFO", f"setting {component}.{name} changed by the CSMS")
        if self.security_events is not None and component == "SecurityCtrlr":
            self.security_events.raise_event("ReconfigurationOfSecurityParameters",
                                             f"{component}.{name} set by the CSMS")

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
        if self.security_events is not None:
            self.security_events.raise_event("ResetOrReboot", f"Reset {type} asked by the CSMS")
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


def _echo(d):
    """A component or variable as the request named it (name, instance, evse) for the answer."""
    out = {"name": d["name"]}
    if d.get("instance"):
        out["instance"] = d["instance"]
    if d.get("evse"):
        out["evse"] = {"id": d["evse"]["id"], **({"connectorId": d["evse"]["connector_id"]}
                                                 if d["evse"].get("connector_id") is not None else {})}
    return out
