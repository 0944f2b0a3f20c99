"""OCPP 1.6J: the bridge's station (host_tools.bridge.ocpp16, reached through the version
negotiation of the shared connect call) against a 1.6 CSMS written with the `ocpp`
package's v16 module. The station runs in this process on its own loop with a controller
facade that records what it is told; every message it sends is checked against the
package's 1.6 schemas (`csms.schema_failures` must stay empty).

OCTT ids: the OCA "OCPP 1.6 Compliance Test Tool" test case ids named per test are the
ones we are sure of (TC_xxx_CS = charge point side); where a test names none, the matching
case was not checked against the tool's list."""

import asyncio
import http.server
import ssl
import threading
import time
from datetime import datetime, timezone

import pytest
from bridge_helpers import make_ca, make_leaf
from ocpp16_csms import Csms16

from host_tools.bridge import service
from host_tools.bridge.backoff import Backoff
from host_tools.bridge.ocpp import Security
from host_tools.bridge.ocpp16.connection import keepalive
from host_tools.bridge.ocpp16.negotiated import NegotiatedStation
from host_tools.link import CommandResult, LinkError

STATION = "CS-16"


class Log:
    def __init__(self):
        self.lines = []

    def event(self, station, code, msg):
        self.lines.append((code, msg))

    def text(self):
        return "\n".join(f"{c} {m}" for c, m in self.lines)


class Controller:
    """The controller facade: validates config_set like the controller (MAX_CHARGE_AMPS 6..80),
    records commands and CSMS plans."""

    fw, serial = "0.3.0", "sim-CS-16"
    volts, phases, max_charge_a = 230.0, 1, 32.0

    def __init__(self):
        self.sample = {"cp": "A", "mode": "idle", "e_in_wh": 100, "mv": 230000}
        self.ready = True
        self.values = {"MAX_CHARGE_AMPS": 32, "RESERVE_MARGIN": 10}
        self.ops = []
        self.plans = []
        self.fota_result = "Installed"
        self.online = True

    async def command(self, op, args):
        if not self.online:
            raise LinkError("controller offline")
        self.ops.append((op, args))
        if op == "config_get":
            return CommandResult("t", True, None, "ok", {"values": dict(self.values)})
        if op == "config_set":
            for k, v in args.items():
                if k == "MAX_CHARGE_AMPS" and not 6 <= v <= 80:
                    return CommandResult("t", False, "V2G-400", f"MAX_CHARGE_AMPS: {v} not in 6..80", {})
            self.values.update(args)
        return CommandResult("t", True, None, "ok", {})

    async def wait_ready(self, timeout):
        return None

    async def apply_csms_plan(self, plan):
        self.plans.append(plan)
        return True, "ok"

    async def diagnostic_report(self):
        return {"diag": {"fw": self.fw}}

    async def fota(self, firmware, report):
        for st in ("Downloading", "Downloaded", "Installing", self.fota_result):
            await report(st)


class Rig:
    def __init__(self, tmp, versions=("ocpp1.6",), max_version="2.1", security=None, **csms_kw):
        self.csms = Csms16(versions=versions, heartbeat_s=1, **csms_kw).start()
        self.ctl = Controller()
        self.log = Log()
        self.tmp = tmp
        sec = security or (Security(1, password=csms_kw["password"]) if csms_kw.get("password") else None)
        self.st = NegotiatedStation(STATION, self.csms.url, self.ctl, tmp / "ocpp", self.log,
                                    max_version=max_version, security=sec, meter_interval_s=60,
                                    backoff=Backoff(0.2, 0.1, 2))
        self.loop = None
        self.t = 0.0

    def on_loop(self, fn, *a):
        """Run fn(*a) on the station's loop (from the steps' thread) and wait for it."""
        async def go():
            r = fn(*a)
            if asyncio.iscoroutine(r):
                r = await r
            return r
        return asyncio.run_coroutine_threadsafe(go(), self.loop).result(10)

    def sample(self, **s):
        """One telemetry sample from the controller, `dt` s after the last."""
        self.t += s.pop("dt", 1.0)
        self.ctl.sample = dict(self.ctl.sample, **s)
        self.on_loop(self.st.on_sample, self.ctl.sample, self.t)

    def req(self, action, payload):
        kind, answer = self.csms.request16(STATION, action, payload)
        assert kind == "result", (action, kind, answer)
        return answer

    async def until_connected(self):
        # the Event to wait on is the one of the version the CSMS picks: poll
        while not self.st.connected.is_set():
            await asyncio.sleep(0.02)

    def run(self, steps):
        async def go():
            self.loop = asyncio.get_running_loop()
            task = asyncio.ensure_future(self.st.run())
            try:
                await asyncio.wait_for(self.until_connected(), 20)
                return await self.loop.run_in_executor(None, steps)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        try:
            return asyncio.run(go())
        finally:
            assert self.csms.schema_failures == []

    def close(self):
        self.csms.close()


@pytest.fixture()
def rig(tmp_path):
    r = Rig(tmp_path)
    yield r
    r.close()


def _sv(payload, measurand, context=None):
    for mv in payload["meterValue"] if "meterValue" in payload else payload:
        for v in mv["sampledValue"]:
            if v.get("measurand") == measurand and (context is None or v.get("context") == context):
                return v
    return None


# ------------------------------------------------------------------ negotiation

def test_negotiation_a_csms_offering_only_ocpp16_gets_ocpp16(rig):
    def steps():
        assert rig.csms.picked[STATION] == "ocpp1.6"
        assert rig.st.version == "1.6"
    rig.run(steps)
    assert rig.st.subprotocols == ["ocpp2.1", "ocpp2.0.1", "ocpp1.6"]


def test_negotiation_a_csms_offering_201_gets_201(tmp_path):
    r = Rig(tmp_path, versions=("ocpp2.0.1", "ocpp1.6"))
    try:
        r.run(lambda: None)
        assert r.csms.picked[STATION] == "ocpp2.0.1" and r.st.version == "2.0.1"
        assert r.csms.messages("BootNotification")          # a 2.0.1 boot
    finally:
        r.close()


def test_negotiation_ocpp_16_option_offers_only_16(tmp_path):
    r = Rig(tmp_path, versions=("ocpp2.0.1", "ocpp1.6"), max_version="1.6")
    try:
        r.run(lambda: None)
        assert r.st.subprotocols == ["ocpp1.6"] and r.csms.picked[STATION] == "ocpp1.6"
    finally:
        r.close()


# ------------------------------------------------------------------ Core

def test_BootNotification_StatusNotification_Heartbeat(rig):
    """OCTT TC_001_CS (cold boot charge point), TC_002_CS-ish heartbeat (id not checked)."""
    def steps():
        boot = rig.csms.wait_for("BootNotification")
        assert boot == {"chargePointVendor": "OpenV2G", "chargePointModel": "V2G-Controller",
                        "chargePointSerialNumber": "sim-CS-16", "firmwareVersion": "0.3.0"}
        rig.csms.wait_for("StatusNotification", lambda p: p["connectorId"] == 0 and p["status"] == "Available")
        rig.csms.wait_for("StatusNotification", lambda p: p["connectorId"] == 1 and p["status"] == "Available")
        rig.csms.wait_for("Heartbeat", timeout=5)            # HeartbeatInterval from the boot answer (1 s)
        assert rig.st.v16.configuration["HeartbeatInterval"] == 1
    rig.run(steps)


def test_BootNotification_pending_is_asked_again(tmp_path):
    r = Rig(tmp_path)
    r.csms.boot_status = "Pending"
    try:
        async def go():
            task = asyncio.ensure_future(r.st.run())
            try:
                while len(r.csms.messages("BootNotification")) < 2:
                    await asyncio.sleep(0.05)
                assert not r.st.connected.is_set()
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        asyncio.run(asyncio.wait_for(go(), 10))
    finally:
        r.close()


def test_BootNotification_loop_stops_when_cancelled_as_the_answer_arrives(tmp_path):
    """asyncio.wait_for (Python < 3.12) drops a cancel that comes with the answer; the boot
    loop must still stop, or the bridge never shuts down while a CSMS keeps it Pending."""
    st = NegotiatedStation(STATION, "ws://127.0.0.1:9/ocpp", Controller(), tmp_path, Log()).v16
    calls = []

    class Cp:
        async def call_raw(self, action, payload):
            calls.append(action)
            asyncio.current_task().cancel()
            try:
                await asyncio.sleep(0)
            except asyncio.CancelledError:   # what wait_for does when the answer is already there
                pass
            return {"status": "Pending", "interval": 1, "currentTime": "2026-01-01T00:00:00Z"}

    async def go():
        st.ctx.cp = Cp()
        task = asyncio.ensure_future(st.provisioning.boot())
        done, _ = await asyncio.wait([task], timeout=3)
        if not done:
            task.cancel()
        return task
    task = asyncio.run(go())
    assert task.cancelled() and calls == ["BootNotification"]


def test_StartTransaction_MeterValues_StopTransaction_on_plug_and_unplug(rig):
    """OCTT TC_003_CS (regular charging session, plug in first) — the id as we remember it."""
    def steps():
        rig.csms.wait_for("StatusNotification", lambda p: p["connectorId"] == 1)
        rig.req("ChangeConfiguration", {"key": "MeterValueSampleInterval", "value": "10"})
        rig.sample(cp="B", mode="idle", e_in_wh=1000)
        start = rig.csms.wait_for("StartTransaction")
        assert start["idTag"] == STATION and start["meterStart"] == 1000 and start["connectorId"] == 1
        rig.sample(cp="C", mode="charging", ma=16000, w=3680, e_in_wh=1200, soc_pm=500, dt=11)
        mv = rig.csms.wait_for("MeterValues", lambda p: "transactionId" in p)
        assert mv["transactionId"] == 1001
        assert _sv(mv, "Current.Import", "Sample.Periodic")["value"] == "16"
        assert _sv(mv, "SoC")["value"] == "50" and _sv(mv, "SoC")["unit"] == "Percent"
        rig.csms.wait_for("StatusNotification", lambda p: p["connectorId"] == 1 and p["status"] == "Charging")
        rig.sample(cp="A", mode="idle", e_in_wh=1500)
        stop = rig.csms.wait_for("StopTransaction")
        assert stop["transactionId"] == 1001 and stop["meterStop"] == 1500 and stop["reason"] == "EVDisconnected"
        ctx = [_sv([m], "Energy.Active.Import.Register")["context"] for m in stop["transactionData"]]
        assert ctx == ["Transaction.Begin", "Transaction.End"]
        rig.csms.wait_for("StatusNotification", lambda p: p["connectorId"] == 1 and p["status"] == "Available",
                          after=0)
    rig.run(steps)


def test_MeterValues_clock_aligned(rig):
    """ClockAlignedDataInterval: one MeterValues at each boundary, timestamped on it."""
    clock = [datetime(2026, 12, 5, 10, 14, 58, tzinfo=timezone.utc)]
    rig.st.v16.transactions.clock = lambda: clock[0]

    def steps():
        assert rig.req("ChangeConfiguration", {"key": "ClockAlignedDataInterval", "value": "900"}) == \
            {"status": "Accepted"}
        rig.sample()
        clock[0] = datetime(2026, 12, 5, 10, 15, 1, tzinfo=timezone.utc)
        rig.sample()
        rig.sample()                         # same slot: nothing more
        mv = rig.csms.wait_for("MeterValues")
        assert mv["meterValue"][0]["timestamp"].startswith("2026-12-05T10:15:00")
        assert _sv(mv, "Energy.Active.Import.Register")["context"] == "Sample.Clock"
        time.sleep(0.3)
        assert len(rig.csms.messages("MeterValues")) == 1
    rig.run(steps)


def test_RemoteStartTransaction_Authorize_and_RemoteStopTransaction(rig):
    """OCTT TC_010_CS-like (remote start, cable plugged in first) and TC_011 remote stop (ids unsure)."""
    def steps():
        rig.sample(cp="B")
        rig.csms.wait_for("StartTransaction")             # plug-in transaction (PlugInIdTag)
        assert rig.req("RemoteStartTransaction", {"idTag": "TAG-1"}) == {"status": "Rejected"}   # one running
        tx = rig.st.v16.transactions
        assert rig.req("RemoteStopTransaction", {"transactionId": 999}) == {"status": "Rejected"}
        assert rig.req("RemoteStopTransaction", {"transactionId": tx.transaction_id}) == {"status": "Accepted"}
        assert ("stop", {}) in rig.ctl.ops
        assert rig.csms.wait_for("StopTransaction")["reason"] == "Remote"
        rig.csms.wait_for("StatusNotification", lambda p: p["status"] == "Finishing")
        rig.sample(cp="A")
        m = rig.csms.mark()
        assert rig.req("RemoteStartTransaction", {"connectorId": 1, "idTag": "TAG-1"}) == {"status": "Accepted"}
        assert rig.csms.wait_for("Authorize", after=m) == {"idTag": "TAG-1"}
        rig.sample(cp="B")
        assert rig.csms.wait_for("StartTransaction", after=m)["idTag"] == "TAG-1"
        # an idTag the CSMS refuses starts nothing
        rig.sample(cp="A")
        rig.csms.authorize_status = "Invalid"
        m = rig.csms.mark()
        rig.req("RemoteStartTransaction", {"idTag": "BAD"})
        rig.csms.wait_for("Authorize", after=m)
        time.sleep(0.2)
        assert tx.remote_id_tag is None
    rig.run(steps)


def test_StartTransaction_answer_Invalid_stops_the_session(rig):
    rig.csms.start_status = "Invalid"

    def steps():
        rig.sample(cp="B")
        rig.csms.wait_for("StartTransaction")
        assert rig.csms.wait_for("StopTransaction")["reason"] == "DeAuthorized"
        assert ("stop", {}) in rig.ctl.ops
    rig.run(steps)


def test_Reset_ends_the_transaction_and_boots_again(rig):
    """OCTT TC_013_CS/TC_014_CS-like (hard/soft reset with a transaction; ids unsure)."""
    def steps():
        rig.sample(cp="B")
        rig.csms.wait_for("StartTransaction")
        m = rig.csms.mark()
        assert rig.req("Reset", {"type": "Hard"}) == {"status": "Accepted"}
        assert rig.csms.wait_for("StopTransaction", after=m)["reason"] == "HardReset"
        assert rig.csms.wait_for("SecurityEventNotification", after=m)["type"] == "ResetOrReboot"
        rig.csms.wait_for("BootNotification", after=m)
    rig.run(steps)


def test_ChangeAvailability_inoperative_scheduled_then_operative(rig):
    """OCTT TC_016/TC_017-like (change availability; ids unsure)."""
    def steps():
        assert rig.req("ChangeAvailability", {"connectorId": 0, "type": "Inoperative"}) == {"status": "Accepted"}
        assert ("stop", {}) in rig.ctl.ops
        rig.csms.wait_for("StatusNotification", lambda p: p["connectorId"] == 1 and p["status"] == "Unavailable")
        rig.sample(cp="B")
        time.sleep(0.2)
        assert rig.csms.messages("StartTransaction") == []           # inoperative: no transaction
        assert rig.req("ChangeAvailability", {"connectorId": 1, "type": "Operative"}) == {"status": "Accepted"}
        rig.sample(cp="B")
        rig.csms.wait_for("StartTransaction")
        assert rig.req("ChangeAvailability", {"connectorId": 1, "type": "Inoperative"}) == {"status": "Scheduled"}
        rig.sample(cp="A")                                             # the transaction ends: applied
        rig.csms.wait_for("StatusNotification", lambda p: p["connectorId"] == 1 and p["status"] == "Unavailable",
                          after=rig.csms.mark() - 3)
        assert not rig.st.available
    rig.run(steps)


def test_GetConfiguration_ChangeConfiguration_map_to_v2g_vars_and_the_controller_validates(rig):
    """OCTT TC_019_CS (retrieve configuration), TC_021_CS (change configuration) as we remember them."""
    def steps():
        got = rig.req("GetConfiguration", {})
        keys = {k["key"]: k for k in got["configurationKey"]}
        assert keys["MAX_CHARGE_AMPS"] == {"key": "MAX_CHARGE_AMPS", "readonly": False, "value": "32"}
        assert keys["NumberOfConnectors"]["readonly"] and keys["WebSocketPingInterval"]["value"] == "60"
        got = rig.req("GetConfiguration", {"key": ["HeartbeatInterval", "NoSuchKey"]})
        assert got["unknownKey"] == ["NoSuchKey"] and got["configurationKey"][0]["value"] == "1"
        assert rig.req("ChangeConfiguration", {"key": "MAX_CHARGE_AMPS", "value": "16"}) == {"status": "Accepted"}
        assert rig.ctl.values["MAX_CHARGE_AMPS"] == 16
        # the controller refuses: Rejected, nothing changes, the reason is in the central log
        assert rig.req("ChangeConfiguration", {"key": "MAX_CHARGE_AMPS", "value": "500"}) == {"status": "Rejected"}
        assert rig.ctl.values["MAX_CHARGE_AMPS"] == 16 and "500 not in 6..80" in rig.log.text()
        assert rig.req("ChangeConfiguration", {"key": "MAX_CHARGE_AMPS", "value": "lots"}) == {"status": "Rejected"}
        assert rig.req("ChangeConfiguration", {"key": "NoSuchKey", "value": "1"}) == {"status": "NotSupported"}
        assert rig.req("ChangeConfiguration", {"key": "NumberOfConnectors", "value": "2"}) == {"status": "Rejected"}
        assert rig.req("ChangeConfiguration", {"key": "MeterValuesSampledData", "value": "Temperature"}) == \
            {"status": "Rejected"}
        assert rig.req("ChangeConfiguration", {"key": "HeartbeatInterval", "value": "30"}) == {"status": "Accepted"}
    rig.run(steps)
    assert rig.st.v16.configuration["HeartbeatInterval"] == 30


def test_TriggerMessage_each_message(rig):
    """OCTT TC_054_CS (trigger message) as we remember it."""
    def steps():
        for msg in ("MeterValues", "StatusNotification", "Heartbeat", "BootNotification",
                    "DiagnosticsStatusNotification", "FirmwareStatusNotification"):
            m = rig.csms.mark()
            assert rig.req("TriggerMessage", {"requestedMessage": msg}) == {"status": "Accepted"}
            got = rig.csms.wait_for(msg, after=m)
            if msg == "MeterValues":
                assert _sv(got, "Voltage", "Trigger")["value"] == "230"
        assert rig.req("TriggerMessage", {"requestedMessage": "Heartbeat", "connectorId": 2}) == {"status": "Rejected"}
    rig.run(steps)


def test_DataTransfer_is_rejected(rig):
    def steps():
        assert rig.req("DataTransfer", {"vendorId": "com.example"}) == {"status": "UnknownVendorId"}
    rig.run(steps)


# ------------------------------------------------------------------ SmartCharging

def _profile(pid, limit, purpose="TxDefaultProfile", stack=0, **extra):
    return {"chargingProfileId": pid, "stackLevel": stack, "chargingProfilePurpose": purpose,
            "chargingProfileKind": "Relative", **extra,
            "chargingSchedule": {"chargingRateUnit": "A",
                                 "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit}]}}


def test_SetChargingProfile_GetCompositeSchedule_ClearChargingProfile(rig):
    """OCTT TC_056_CS (TxDefaultProfile), TC_057_CS (TxProfile), TC_066_CS (composite schedule) as we
    remember them; ChargePointMaxProfile caps both."""
    def steps():
        assert rig.ctl.plans[-1] == {"charge_a": None, "discharge_a": 0.0, "direction": None}   # charge-only
        assert rig.req("SetChargingProfile", {"connectorId": 1, "csChargingProfiles": _profile(1, 16.0)}) == \
            {"status": "Accepted"}
        assert rig.ctl.plans[-1] == {"charge_a": 16.0, "discharge_a": 0.0, "direction": None}
        assert rig.req("SetChargingProfile", {"connectorId": 0, "csChargingProfiles": _profile(
            2, 10.0, "ChargePointMaxProfile")}) == {"status": "Accepted"}
        assert rig.ctl.plans[-1]["charge_a"] == 10.0
        # a TxProfile needs the running transaction
        assert rig.req("SetChargingProfile", {"connectorId": 1, "csChargingProfiles": _profile(
            3, 6.0, "TxProfile")}) == {"status": "Rejected"}
        rig.sample(cp="B")
        rig.csms.wait_for("StartTransaction")
        tx_id = rig.st.v16.transactions.transaction_id
        while tx_id is None:
            time.sleep(0.02)
            tx_id = rig.st.v16.transactions.transaction_id
        assert rig.req("SetChargingProfile", {"connectorId": 1, "csChargingProfiles": _profile(
            3, 6.0, "TxProfile", transactionId=tx_id)}) == {"status": "Accepted"}
        assert rig.ctl.plans[-1]["charge_a"] == 6.0
        comp = rig.req("GetCompositeSchedule", {"connectorId": 1, "duration": 600, "chargingRateUnit": "A"})
        assert comp["status"] == "Accepted"
        assert comp["chargingSchedule"]["chargingSchedulePeriod"] == [{"startPeriod": 0, "limit": 6.0}]
        comp = rig.req("GetCompositeSchedule", {"connectorId": 1, "duration": 600, "chargingRateUnit": "W"})
        assert comp["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] == 1380.0
        assert rig.req("ClearChargingProfile", {"id": 3}) == {"status": "Accepted"}
        assert rig.ctl.plans[-1]["charge_a"] == 10.0
        assert rig.req("ClearChargingProfile", {"chargingProfilePurpose": "ChargePointMaxProfile"}) == \
            {"status": "Accepted"}
        assert rig.ctl.plans[-1] == {"charge_a": 16.0, "discharge_a": 0.0, "direction": None}
        assert rig.req("ClearChargingProfile", {"id": 77}) == {"status": "Unknown"}
    rig.run(steps)


def test_SetChargingProfile_negative_limit_rejected_controller_charge_only_reason_published(rig):
    """1.6 has no discharge: a negative limit is Rejected (V2G-302), nothing stored, the controller
    keeps a discharge limit of 0 from the CSMS and the app's status says why."""
    def steps():
        n = len(rig.ctl.plans)
        assert rig.req("SetChargingProfile", {"connectorId": 1, "csChargingProfiles": _profile(5, -10.0)}) == \
            {"status": "Rejected"}
        assert len(rig.ctl.plans) == n and rig.ctl.plans[-1]["discharge_a"] == 0.0
        assert rig.st.v16.smart_charging.profiles.profiles == {}
        assert any(c == "V2G-302" and "limit: -10.0 < 0" in m for c, m in rig.log.lines)
    rig.run(steps)
    ok, why = service.v2g_reason({"v2g_available": True}, True, True, rig.st.version)
    assert not ok and why == "V2G-302 the CSMS speaks OCPP 1.6: discharge needs 2.0.1 or later"
    assert service.v2g_reason({"v2g_available": True}, True, True, "2.0.1") == (True, None)


# ------------------------------------------------------------------ security extension, diagnostics

def test_SignedUpdateFirmware_SignedFirmwareStatusNotification_SecurityEventNotification(rig):
    def steps():
        fw = {"location": "https://fw.example/bundle", "retrieveDateTime": "2026-01-01T00:00:00Z",
              "signingCertificate": "-----BEGIN CERTIFICATE-----x", "signature": "c2ln"}
        m = rig.csms.mark()
        assert rig.req("SignedUpdateFirmware", {"requestId": 7, "firmware": fw}) == {"status": "Accepted"}
        rig.csms.wait_for("SignedFirmwareStatusNotification", lambda p: p["status"] == "Installed", after=m)
        got = [p["status"] for p in rig.csms.messages("SignedFirmwareStatusNotification", after=m)]
        assert got == ["Downloading", "Downloaded", "Installing", "Installed"]
        assert rig.csms.wait_for("SecurityEventNotification", after=m)["type"] == "FirmwareUpdated"
        rig.ctl.fota_result = "InvalidSignature"
        while rig.st.firmware_busy:          # the first update's last report is being answered
            time.sleep(0.02)
        m = rig.csms.mark()
        rig.req("SignedUpdateFirmware", {"requestId": 8, "firmware": fw})
        assert rig.csms.wait_for("SecurityEventNotification", after=m)["type"] == "InvalidFirmwareSignature"
        assert rig.req("SignedUpdateFirmware", {"requestId": 9, "firmware": dict(fw, location="ftp://x/y")}) == \
            {"status": "Rejected"}
    rig.run(steps)


def test_GetDiagnostics_uploads_the_report_and_DiagnosticsStatusNotification(rig):
    got = {}

    class Put(http.server.BaseHTTPRequestHandler):
        def do_PUT(self):  # noqa: N802
            got[self.path] = self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(201)
            self.end_headers()

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Put)
    threading.Thread(target=srv.serve_forever, daemon=True).start()

    def steps():
        ans = rig.req("GetDiagnostics", {"location": f"http://127.0.0.1:{srv.server_port}/up"})
        rig.csms.wait_for("DiagnosticsStatusNotification", lambda p: p["status"] == "Uploaded")
        assert [p["status"] for p in rig.csms.messages("DiagnosticsStatusNotification")] == ["Uploading", "Uploaded"]
        assert b'"ocpp": "1.6"' in got["/up/" + ans["fileName"]]
    try:
        rig.run(steps)
    finally:
        srv.shutdown()


def test_security_profile_1_basic_auth_and_SecurityProfile_key(tmp_path):
    r = Rig(tmp_path, password="s3cret-pw")
    try:
        def steps():
            got = r.req("GetConfiguration", {"key": ["SecurityProfile"]})
            assert got["configurationKey"][0]["value"] == "1"
        r.run(steps)
        assert r.csms.auth_failures == 0
    finally:
        r.close()


@pytest.mark.parametrize("profile", [2, 3])
def test_security_profiles_2_and_3_over_wss(tmp_path, profile):
    """2: wss + Basic Auth against the CSMS's own CA; 3: wss + client certificate (the connect
    call is the 2.x station's, shared: the same Security object, now with 1.6 picked)."""
    ca_key, ca_cert, ca = make_ca(tmp_path)
    srv = make_leaf(tmp_path, ca_key, ca_cert, "csms")
    cli = make_leaf(tmp_path, ca_key, ca_cert, "station", server=False)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*srv)
    if profile == 3:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(str(ca))
        sec, pw = Security(3, ca_file=str(ca), cert_file=str(cli[0]), key_file=str(cli[1])), None
    else:
        pw = "0123456789abcdef"
        sec = Security(2, password=pw, ca_file=str(ca))
    r = Rig(tmp_path, security=sec, ssl=ctx, password=pw)
    try:
        def steps():
            assert r.csms.url.startswith("wss://") and r.csms.picked[STATION] == "ocpp1.6"
            got = r.req("GetConfiguration", {"key": ["SecurityProfile"]})
            assert got["configurationKey"][0]["value"] == str(profile)
            # profiles 2 and 3 upload diagnostics over https only
            assert r.req("GetDiagnostics", {"location": "http://127.0.0.1:9/up"}) == {}
        r.run(steps)
        assert r.csms.auth_failures == 0
    finally:
        r.close()


# ------------------------------------------------------------------ offline queue, keep-alive

def test_offline_queue_StartTransaction_MeterValues_StopTransaction_replayed_across_a_drop(rig):
    def steps():
        rig.req("ChangeConfiguration", {"key": "MeterValueSampleInterval", "value": "5"})
        rig.csms.stop()                                   # the CSMS goes away
        deadline = time.monotonic() + 5
        while rig.st.connected.is_set() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not rig.st.connected.is_set()
        m = rig.csms.mark()
        rig.sample(cp="B", e_in_wh=2000)
        rig.sample(cp="C", mode="charging", e_in_wh=2100, dt=6)
        rig.sample(cp="A", e_in_wh=2200)
        assert len(rig.st.v16.transactions.queue) == 3
        rig.csms.start()                                  # back on the same port
        stop = rig.csms.wait_for("StopTransaction", after=m, timeout=20)
        seq = [a for _, a, _, _ in rig.csms.received[m:] if a in ("StartTransaction", "MeterValues",
                                                                   "StopTransaction")]
        assert seq == ["StartTransaction", "MeterValues", "StopTransaction"]
        mv = rig.csms.messages("MeterValues", after=m)[0]
        assert mv["transactionId"] == stop["transactionId"] == rig.csms.next_tx_id   # the id of the replay
        assert stop["meterStop"] == 2200
        deadline = time.monotonic() + 5
        while len(rig.st.v16.transactions.queue) and time.monotonic() < deadline:   # popped once answered
            time.sleep(0.02)
        assert len(rig.st.v16.transactions.queue) == 0
    rig.run(steps)


def test_offline_queue_a_StopTransaction_unanswered_when_the_link_drops_goes_out_again_at_once(rig):
    """The answer to a CALL on a socket that closed cannot come: the message is sent again on the
    next session, not after the response timeout (30 s) of the dead one."""
    def steps():
        rig.sample(cp="B")
        rig.csms.wait_for("StartTransaction")
        rig.csms.hold.add("StopTransaction")
        m = rig.csms.mark()
        rig.sample(cp="A")
        rig.csms.wait_for("StopTransaction", after=m)          # received, never answered
        m = rig.csms.mark()
        rig.csms.drop(STATION)
        again = rig.csms.wait_for("StopTransaction", after=m, timeout=10)
        assert again["reason"] == "EVDisconnected"
    rig.run(steps)


def test_WebSocketPingInterval_keepalive_closes_a_dead_connection():
    """The 1.6 key drives the ping; a pong that never comes closes the socket."""
    class DeadWs:
        def __init__(self):
            self.pings = 0
            self.closed = None

        async def ping(self):
            self.pings += 1
            return asyncio.get_running_loop().create_future()     # no pong, ever

        async def close(self, code, reason):
            self.closed = (code, reason)

    async def go():
        ws, dead = DeadWs(), []
        await asyncio.wait_for(keepalive(ws, lambda: 0.05, dead.append), 2)
        return ws, dead
    ws, dead = asyncio.run(go())
    assert ws.pings == 1 and ws.closed == (1011, "keep-alive timeout")
    assert dead == ["no pong within 0.05 s (WebSocketPingInterval)"]
