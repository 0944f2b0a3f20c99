"""OCPP 2.0.1 conformance of the bridge's station, case by case: each test is named after the
OCTT charging-station test case it follows (Part 6, TC_<block>_<nn>_CS), for one EVSE with
one connector. A test without an OCTT id checks a functional requirement (or an OCPP-J rule
of Part 4) that no OCTT case covers. The CSMS checks every frame the station sends against
the package's JSON schemas (date-time formats included) and fails the test at its end if one
did not conform."""

import json
import time

import pytest
from ocpp.v201 import call
from ocpp_station_rig import STATION, Rig

from host_tools.bridge.ocpp.device_model import ITEMS_PER_MESSAGE, PERIODS_PER_SCHEDULE


@pytest.fixture()
def rig(tmp_path):
    r = Rig(tmp_path)
    yield r
    r.close()


def _get(rig, *items):
    """GetVariables through the CSMS: (component, variable[, instance[, attributeType]])."""
    data = []
    for c, v, *rest in items:
        d = {"component": {"name": c}, "variable": {"name": v}}
        if rest and rest[0]:
            d["variable"]["instance"] = rest[0]
        if len(rest) > 1:
            d["attribute_type"] = rest[1]
        data.append(d)
    kind, res = rig.request(call.GetVariables(get_variable_data=data))
    assert kind == "result", res
    return res["getVariableResult"]


def _report(rig, mark, request_id):
    """Every reportData entry of the NotifyReports for request_id, in seqNo order, once tbc is false."""
    rig.csms.wait_for("NotifyReport", lambda kw: kw["request_id"] == request_id and not kw.get("tbc"),
                      after=mark)
    parts = sorted((kw for kw in rig.csms.messages("NotifyReport", after=mark) if kw["request_id"] == request_id),
                   key=lambda kw: kw["seq_no"])
    assert [p["seq_no"] for p in parts] == list(range(len(parts)))
    return [e for p in parts for e in p.get("report_data") or []]


# ---------------------------------------------------------------------------- B Provisioning

def test_TC_B_01_CS_cold_boot_accepted(rig):
    boot = rig.csms.wait_for("BootNotification")
    assert boot["reason"] == "PowerUp" and boot["charging_station"]["vendor_name"]
    st = rig.csms.wait_for("StatusNotification")
    assert (st["evse_id"], st["connector_id"], st["connector_status"]) == (1, 1, "Available")


@pytest.mark.parametrize("answer", ["Pending", "Rejected"])
def test_TC_B_02_CS_and_TC_B_03_CS_cold_boot_pending_or_rejected_retries_and_sends_nothing_else(tmp_path, answer):
    """B02/B03: while the CSMS says Pending or Rejected the station sends BootNotification again
    after the interval it was given, and nothing else; once Accepted, the rest follows."""
    r = Rig(tmp_path, boot_status=[answer, answer], heartbeat_s=1)
    try:
        acts = [a for _, a, _, _ in r.csms.received]
        assert acts[:3] == ["BootNotification"] * 3, acts
        t = [t for _, a, _, t in r.csms.received if a == "BootNotification"]
        assert t[1] - t[0] >= 0.9 and t[2] - t[1] >= 0.9        # the interval given (1 s)
        r.csms.wait_for("StatusNotification")
    finally:
        r.close()


def test_TC_B_06_CS_get_variables_single_value_names_the_attribute_type(rig):
    # B06.FR.01/.02/.03: one result per item, component and variable as asked, attributeType
    # as asked and Actual when none was (B06.FR.11)
    (r,) = _get(rig, ("OCPPCommCtrlr", "OfflineThreshold"))
    assert r["attributeStatus"] == "Accepted" and r["attributeType"] == "Actual" and r["attributeValue"] == "60"
    (r,) = _get(rig, ("OCPPCommCtrlr", "OfflineThreshold", None, "Actual"))
    assert r["attributeType"] == "Actual" and r["attributeStatus"] == "Accepted"
    (r,) = _get(rig, ("V2GController", "MAX_CHARGE_AMPS", None, "Actual"))
    assert (r["attributeStatus"], r["attributeType"], r["attributeValue"]) == ("Accepted", "Actual", "32")
    # B06.FR.04: an attribute type the variable does not have
    (r,) = _get(rig, ("OCPPCommCtrlr", "OfflineThreshold", None, "Target"))
    assert r["attributeStatus"] == "NotSupportedAttributeType" and r["attributeType"] == "Target"
    assert "attributeValue" not in r


def test_TC_B_07_CS_get_variables_multiple_values_unknown_component_and_variable(rig):
    res = _get(rig, ("OCPPCommCtrlr", "HeartbeatInterval"), ("OCPPCommCtrlr", "NoSuchVariable"),
               ("NoSuchCtrlr", "Enabled"), ("OCPPCommCtrlr", "MessageAttempts", "TransactionEvent"),
               ("DeviceDataCtrlr", "ItemsPerMessage", "GetVariables"))
    assert [r["attributeStatus"] for r in res] == ["Accepted", "UnknownVariable", "UnknownComponent",
                                                   "Accepted", "Accepted"]
    assert res[1]["variable"] == {"name": "NoSuchVariable"} and res[2]["component"] == {"name": "NoSuchCtrlr"}
    assert res[3]["variable"] == {"name": "MessageAttempts", "instance": "TransactionEvent"}
    assert int(res[4]["attributeValue"]) == ITEMS_PER_MESSAGE


def test_TC_B_08_CS_get_variables_beyond_items_per_message_are_rejected(rig):
    items = [("OCPPCommCtrlr", "HeartbeatInterval")] * (ITEMS_PER_MESSAGE + 1)
    res = _get(rig, *items)
    assert len(res) == ITEMS_PER_MESSAGE + 1
    assert [r["attributeStatus"] for r in res[:-1]] == ["Accepted"] * ITEMS_PER_MESSAGE
    assert res[-1]["attributeStatus"] == "Rejected" and "attributeValue" not in res[-1]


def test_TC_B_09_CS_set_variables_single_value_and_what_cannot_be_set(rig):
    assert rig.set_vars(("OCPPCommCtrlr", "OfflineThreshold", 120)) == ["Accepted"]
    assert _get(rig, ("OCPPCommCtrlr", "OfflineThreshold"))[0]["attributeValue"] == "120"
    # an unknown variable of a known component is UnknownVariable, not a read-only refusal
    assert rig.set_vars(("OCPPCommCtrlr", "NoSuchVariable", 1)) == ["UnknownVariable"]
    assert rig.set_vars(("NoSuchCtrlr", "Enabled", "true")) == ["UnknownComponent"]
    kind, res = rig.request(call.SetVariables(set_variable_data=[
        {"component": {"name": "ChargingStation"}, "variable": {"name": "Model"}, "attribute_value": "HACKED"},
        {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "OfflineThreshold"},
         "attribute_value": "5", "attribute_type": "Target"}]))
    ro, target = res["setVariableResult"]
    assert ro["attributeStatus"] == "Rejected" and ro["attributeStatusInfo"]["reasonCode"] == "ReadOnly"
    assert target["attributeStatus"] == "NotSupportedAttributeType" and target["attributeType"] == "Target"
    assert _get(rig, ("ChargingStation", "Model"))[0]["attributeValue"] != "HACKED"
    assert _get(rig, ("OCPPCommCtrlr", "OfflineThreshold"))[0]["attributeValue"] == "120"


def test_TC_B_10_CS_set_variables_multiple_values(rig):
    res = rig.set_vars(("OCPPCommCtrlr", "MessageAttempts", 5, "TransactionEvent"),
                       ("SampledDataCtrlr", "TxUpdatedInterval", 30), ("V2GController", "MAX_CHARGE_AMPS", 20),
                       ("TxCtrlr", "EVConnectionTimeOut", 90))
    assert res == ["Accepted"] * 4
    assert rig.st.transactions.meter_interval_s == 30 and rig.ctl.values["MAX_CHARGE_AMPS"] == 20
    got = _get(rig, ("OCPPCommCtrlr", "MessageAttempts", "TransactionEvent"), ("TxCtrlr", "EVConnectionTimeOut"))
    assert [g["attributeValue"] for g in got] == ["5", "90"]


def test_TC_B_11_CS_set_variables_invalidly_formatted_values_change_nothing(rig):
    res = rig.set_vars(("OCPPCommCtrlr", "OfflineThreshold", "ten"), ("OCPPCommCtrlr", "WebSocketPingInterval", -1),
                       ("TxCtrlr", "TxStartPoint", "Authorized"), ("V2GController", "MAX_CHARGE_AMPS", 500),
                       ("V2GController", "MAX_CHARGE_AMPS", "x"), ("OCPPCommCtrlr", "RetryBackOffRepeatTimes", 20))
    assert res == ["Rejected"] * 6     # 3 s x 2^20 would be a reconnect every 36 days
    got = _get(rig, ("OCPPCommCtrlr", "OfflineThreshold"), ("OCPPCommCtrlr", "WebSocketPingInterval"),
               ("TxCtrlr", "TxStartPoint"), ("V2GController", "MAX_CHARGE_AMPS"))
    assert [g["attributeValue"] for g in got] == ["60", "30", "EVConnected", "32"]


# the variables Part 2 requires of every station ("Referenced Components and Variables") that
# apply to one EVSE, one connector, no local authorisation
REQUIRED = [("OCPPCommCtrlr", "HeartbeatInterval", None), ("OCPPCommCtrlr", "OfflineThreshold", None),
            ("OCPPCommCtrlr", "MessageAttempts", "TransactionEvent"),
            ("OCPPCommCtrlr", "MessageAttemptInterval", "TransactionEvent"),
            ("OCPPCommCtrlr", "MessageTimeout", "Default"), ("OCPPCommCtrlr", "NetworkConfigurationPriority", None),
            ("OCPPCommCtrlr", "NetworkProfileConnectionAttempts", None), ("OCPPCommCtrlr", "ResetRetries", None),
            ("OCPPCommCtrlr", "WebSocketPingInterval", None), ("OCPPCommCtrlr", "FileTransferProtocols", None),
            ("DeviceDataCtrlr", "ItemsPerMessage", "GetReport"), ("DeviceDataCtrlr", "ItemsPerMessage", "GetVariables"),
            ("DeviceDataCtrlr", "BytesPerMessage", "GetReport"), ("DeviceDataCtrlr", "BytesPerMessage", "GetVariables"),
            ("AuthCtrlr", "AuthorizeRemoteStart", None), ("AuthCtrlr", "LocalAuthorizeOffline", None),
            ("AuthCtrlr", "LocalPreAuthorize", None), ("TxCtrlr", "EVConnectionTimeOut", None),
            ("TxCtrlr", "StopTxOnEVSideDisconnect", None), ("TxCtrlr", "StopTxOnInvalidId", None),
            ("TxCtrlr", "TxStartPoint", None), ("TxCtrlr", "TxStopPoint", None),
            ("SampledDataCtrlr", "TxEndedMeasurands", None), ("SampledDataCtrlr", "TxEndedInterval", None),
            ("SampledDataCtrlr", "TxStartedMeasurands", None), ("SampledDataCtrlr", "TxUpdatedMeasurands", None),
            ("SampledDataCtrlr", "TxUpdatedInterval", None), ("AlignedDataCtrlr", "Measurands", None),
            ("AlignedDataCtrlr", "Interval", None), ("AlignedDataCtrlr", "TxEndedMeasurands", None),
            ("AlignedDataCtrlr", "TxEndedInterval", None), ("SecurityCtrlr", "SecurityProfile", None),
            ("SecurityCtrlr", "OrganizationName", None), ("SecurityCtrlr", "CertificateEntries", None),
            ("SmartChargingCtrlr", "Entries", "ChargingProfiles"), ("SmartChargingCtrlr", "LimitChangeSignificance", None),
            ("SmartChargingCtrlr", "PeriodsPerSchedule", None), ("SmartChargingCtrlr", "ProfileStackLevel", None),
            ("SmartChargingCtrlr", "RateUnit", None), ("ClockCtrlr", "DateTime", None), ("ClockCtrlr", "TimeSource", None)]


def _key(e):
    return (e["component"]["name"], e["variable"]["name"], e["variable"].get("instance"))


def test_TC_B_12_CS_base_report_configuration_inventory_lists_only_what_can_be_set(rig):
    mark = rig.csms.mark()
    kind, res = rig.request(call.GetBaseReport(request_id=12, report_base="ConfigurationInventory"))
    assert res["status"] == "Accepted"
    entries = _report(rig, mark, 12)
    assert entries and all(a["mutability"] != "ReadOnly" for e in entries for a in e["variable_attribute"])
    keys = {_key(e) for e in entries}
    assert ("OCPPCommCtrlr", "WebSocketPingInterval", None) in keys and ("V2GController", "MAX_CHARGE_AMPS", None) in keys
    assert ("ChargingStation", "Model", None) not in keys and ("SmartChargingCtrlr", "PeriodsPerSchedule", None) not in keys


def test_TC_B_13_CS_and_TC_B_53_CS_full_inventory_has_every_required_variable(rig):
    mark = rig.csms.mark()
    kind, res = rig.request(call.GetBaseReport(request_id=13, report_base="FullInventory"))
    assert res["status"] == "Accepted"
    entries = _report(rig, mark, 13)
    keys = {_key(e) for e in entries}
    assert [k for k in REQUIRED if k not in keys] == []
    for e in entries:
        ch = e["variable_characteristics"]
        if ch["data_type"] in ("OptionList", "MemberList", "SequenceList"):
            assert ch.get("values_list"), e        # TC_B_13_CS: lists carry their valuesList
    assert len({e["seq_no"] for e in rig.csms.messages("NotifyReport", after=mark)}) > 1   # chunked


def test_B08_custom_report_by_component_variable_and_criteria(rig):
    mark = rig.csms.mark()
    kind, res = rig.request(call.GetReport(request_id=14, component_variable=[
        {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "OfflineThreshold"}},
        {"component": {"name": "TxCtrlr"}}]))
    assert res["status"] == "Accepted"
    keys = {_key(e) for e in _report(rig, mark, 14)}
    assert ("OCPPCommCtrlr", "OfflineThreshold", None) in keys and ("TxCtrlr", "TxStartPoint", None) in keys
    assert all(k[0] in ("OCPPCommCtrlr", "TxCtrlr") for k in keys)
    assert ("OCPPCommCtrlr", "HeartbeatInterval", None) not in keys
    # componentCriteria: every component here is Enabled; none has a Problem
    mark = rig.csms.mark()
    kind, res = rig.request(call.GetReport(request_id=15, component_criteria=["Enabled"],
                                           component_variable=[{"component": {"name": "ClockCtrlr"}}]))
    assert res["status"] == "Accepted" and {_key(e)[0] for e in _report(rig, mark, 15)} == {"ClockCtrlr"}
    kind, res = rig.request(call.GetReport(request_id=16, component_criteria=["Problem"]))
    assert res["status"] == "EmptyResultSet"
    kind, res = rig.request(call.GetReport(request_id=17, component_variable=[
        {"component": {"name": "NoSuchCtrlr"}}]))
    assert res["status"] == "EmptyResultSet"
    assert not [kw for kw in rig.csms.messages("NotifyReport", after=mark) if kw["request_id"] in (16, 17)]


def test_TC_B_20_CS_reset_on_idle_without_transaction_boots_again_and_is_a_security_event(rig):
    mark = rig.csms.mark()
    kind, res = rig.request(call.Reset(type="OnIdle"))
    assert res["status"] == "Accepted"
    boot = rig.csms.wait_for("BootNotification", after=mark)
    assert boot["reason"] == "RemoteReset"
    st = rig.csms.wait_for("StatusNotification", after=mark)
    assert (st["connector_status"], st["evse_id"], st["connector_id"]) == ("Available", 1, 1)
    ev = rig.csms.wait_for("SecurityEventNotification", lambda kw: kw["type"] == "ResetOrReboot", after=mark)
    assert "OnIdle" in ev["tech_info"]


def test_TC_B_22_CS_reset_immediate_with_a_transaction_ends_it_first(rig):
    tx = _plug(rig)
    mark = rig.csms.mark()
    kind, res = rig.request(call.Reset(type="Immediate"))
    assert res["status"] == "Accepted"
    ended = rig.csms.wait_for("TransactionEvent", lambda kw: kw["event_type"] == "Ended", after=mark)
    assert ended["trigger_reason"] == "ResetCommand"
    assert ended["transaction_info"]["transaction_id"] == tx
    assert ended["transaction_info"]["stopped_reason"] == "ImmediateReset"
    assert ended["transaction_info"]["charging_state"] == "EVConnected"
    assert rig.csms.wait_for("BootNotification", after=mark)["reason"] == "RemoteReset"
    assert ("stop", {}) in rig.ctl.commands


# ---------------------------------------------------------------------------- A Security

def test_A04_security_events_startup_and_settings_change_queued_while_offline(rig):
    rig.csms.wait_for("SecurityEventNotification", lambda kw: kw["type"] == "StartupOfTheDevice")
    mark = rig.csms.mark()
    assert rig.set_vars(("SecurityCtrlr", "OrganizationName", "Open V2G")) == ["Accepted"]
    ev = rig.csms.wait_for("SecurityEventNotification", lambda kw: kw["type"] == "ReconfigurationOfSecurityParameters",
                           after=mark)
    assert "OrganizationName" in ev["tech_info"]


def test_A04_failed_authentication_at_the_csms_is_reported_once_in(tmp_path):
    """A01/A04: the CSMS refused the Basic Auth password (HTTP 401); the event waits until a
    later connection succeeds, then goes out as FailedToAuthenticateAtCsms."""
    from host_tools.bridge.ocpp import Security
    r = None
    try:
        from ocpp_station_rig import Rig as _Rig
        r = _Rig.__new__(_Rig)
        # the CSMS asks a password the station does not have until the operator fixes it
        from ocpp_csms import Csms
        r.csms = Csms(versions=("ocpp2.0.1",), password="right").start()
        import asyncio
        import threading

        from ocpp_station_rig import Controller, Log

        from host_tools.bridge.backoff import Backoff
        from host_tools.bridge.ocpp import OcppStation
        r.ctl, r.log, r.proxy = Controller(), Log(), None
        r.loop = asyncio.new_event_loop()
        r.thread = threading.Thread(target=r.loop.run_forever, daemon=True)
        r.thread.start()
        sec = Security(1, password="wrong")

        async def make():
            return OcppStation(STATION, r.csms.url, r.ctl, tmp_path / "ocpp", r.log, max_version="2.0.1",
                               security=sec, backoff=Backoff(0.1, 0, 1))
        r.st = r.do(make())
        r.start()
        r.wait(lambda: r.csms.auth_failures >= 1, 10, "a refused login")
        sec.password = "right"
        r.wait(lambda: r.st.connected.is_set(), 10, "the login")
        ev = r.csms.wait_for("SecurityEventNotification", lambda kw: kw["type"] == "FailedToAuthenticateAtCsms")
        assert "401" in ev["tech_info"]
    finally:
        if r is not None:
            r.close()


# ---------------------------------------------------------------------------- E Transactions

def _plug(rig):
    mark = rig.csms.mark()
    rig.sample(cp="C", mode="charging", ma=16000, w=3680)
    started = rig.csms.wait_for("TransactionEvent", lambda kw: kw["event_type"] == "Started", after=mark)
    return started["transaction_info"]["transaction_id"]


def test_E01_and_TC_E_14_CS_transaction_from_cable_in_to_cable_out(rig):
    """E01/E06: TxStartPoint and TxStopPoint EVConnected: plugging in starts the transaction,
    unplugging ends it (stoppedReason EVDisconnected); seqNo counts from 0."""
    mark = rig.csms.mark()
    tx = _plug(rig)
    rig.sample(cp="A", mode="idle")
    ended = rig.csms.wait_for("TransactionEvent", lambda kw: kw["event_type"] == "Ended", after=mark)
    evs = [kw for kw in rig.csms.messages("TransactionEvent", after=mark)]
    assert evs[0]["trigger_reason"] == "CablePluggedIn" and evs[0]["seq_no"] == 0
    assert ended["transaction_info"] == dict(ended["transaction_info"], transaction_id=tx,
                                             stopped_reason="EVDisconnected", charging_state="Idle")
    assert [e["seq_no"] for e in evs] == list(range(len(evs)))
    st = rig.csms.wait_for("StatusNotification", lambda kw: kw["connector_status"] == "Available", after=mark)
    assert st["evse_id"] == 1


def test_TC_E_29_CS_and_TC_E_30_CS_transaction_status_ongoing_with_and_without_queued_messages(rig):
    tx = _plug(rig)
    rig.wait(lambda: len(rig.st.transactions.queue) == 0, what="the queue drained")
    kind, res = rig.request(call.GetTransactionStatus(transaction_id=tx))
    assert res == {"ongoingIndicator": True, "messagesInQueue": False}
    # the CSMS cannot be reached for a moment: the next event waits in the queue
    rig.call_soon(rig.st.ctx.connected.clear)
    rig.sample(mode="paused")
    rig.wait(lambda: len(rig.st.transactions.queue) == 1, what="an event queued")
    rig.call_soon(rig.st.ctx.connected.set)
    kind, res = rig.request(call.GetTransactionStatus(transaction_id=tx))
    assert res["ongoingIndicator"] is True and res["messagesInQueue"] is True


def test_TC_E_31_CS_to_TC_E_34_CS_transaction_status_ended_unknown_and_without_id(rig):
    tx = _plug(rig)
    rig.call_soon(rig.st.ctx.connected.clear)
    rig.sample(cp="A", mode="idle")                    # cable out: Ended, queued
    rig.wait(lambda: len(rig.st.transactions.queue) == 1, what="Ended queued")
    rig.call_soon(rig.st.ctx.connected.set)
    kind, res = rig.request(call.GetTransactionStatus(transaction_id=tx))
    assert res == {"ongoingIndicator": False, "messagesInQueue": True}          # TC_E_31_CS
    kind, res = rig.request(call.GetTransactionStatus())
    assert res == {"messagesInQueue": True}                                       # TC_E_33_CS
    kind, res = rig.request(call.GetTransactionStatus(transaction_id="no-such-tx"))
    assert res == {"ongoingIndicator": False, "messagesInQueue": False}           # TC_E_32_CS
    rig.call_soon(rig.st.transactions.kick)
    rig.wait(lambda: len(rig.st.transactions.queue) == 0, what="the queue drained")
    kind, res = rig.request(call.GetTransactionStatus())
    assert res == {"messagesInQueue": False}                                      # TC_E_34_CS


def test_E13_a_refused_transaction_event_stops_after_message_attempts(rig):
    """E13.FR.?: a TransactionEvent answered with a CALLERROR is sent MessageAttempts times,
    MessageAttemptInterval x attempt apart, then no more (set aside for billing)."""
    assert rig.set_vars(("OCPPCommCtrlr", "MessageAttempts", 3, "TransactionEvent"),
                        ("OCPPCommCtrlr", "MessageAttemptInterval", 0, "TransactionEvent")) == ["Accepted"] * 2
    rig.csms.refuse_tx = 100
    mark = rig.csms.mark()
    rig.sample(cp="C", mode="charging")
    rig.wait(lambda: rig.st.ctx.counters.get("tx_events_dead", 0) == 1, what="the event set aside")
    sent = rig.csms.messages("TransactionEvent", after=mark)
    assert len(sent) == 3 and {m["seq_no"] for m in sent} == {0}
    time.sleep(0.3)   # nothing more goes out: the sender is idle, not retrying
    assert len(rig.csms.messages("TransactionEvent", after=mark)) == 3
    assert "3 attempts (MessageAttempts 3)" in rig.log.text()


def test_J02_transaction_events_carry_the_configured_measurands(rig):
    assert rig.set_vars(("SampledDataCtrlr", "TxStartedMeasurands", "Energy.Active.Import.Register,SoC")) == ["Accepted"]
    mark = rig.csms.mark()
    rig.sample(cp="C", mode="charging", soc_pm=500)
    ev = rig.csms.wait_for("TransactionEvent", lambda kw: kw["event_type"] == "Started", after=mark)
    assert {s["measurand"] for s in ev["meter_value"][0]["sampled_value"]} == {"Energy.Active.Import.Register", "SoC"}
    assert rig.set_vars(("SampledDataCtrlr", "TxUpdatedMeasurands", "Power.Active.Export.Typo")) == ["Rejected"]


# ---------------------------------------------------------------------------- F RemoteControl

TOKEN = {"id_token": "TAG-7", "type": "Central"}


def test_TC_F_01_CS_remote_start_with_the_cable_in_first(rig):
    tx = _plug(rig)
    mark = rig.csms.mark()
    kind, res = rig.request(call.RequestStartTransaction(id_token=TOKEN, remote_start_id=11, evse_id=1))
    assert res["status"] == "Accepted" and res["transactionId"] == tx
    ev = rig.csms.wait_for("TransactionEvent", lambda kw: kw["trigger_reason"] == "RemoteStart", after=mark)
    assert ev["id_token"] == {"id_token": "TAG-7", "type": "Central"}
    assert ev["transaction_info"]["remote_start_id"] == 11


def test_TC_F_02_CS_remote_start_first_then_the_cable(rig):
    kind, res = rig.request(call.RequestStartTransaction(id_token=TOKEN, remote_start_id=12, evse_id=1))
    assert res["status"] == "Accepted"
    mark = rig.csms.mark()
    rig.sample(cp="C", mode="charging")
    ev = rig.csms.wait_for("TransactionEvent", lambda kw: kw["event_type"] == "Started", after=mark)
    assert ev["trigger_reason"] == "RemoteStart" and ev["transaction_info"]["remote_start_id"] == 12
    assert ev["id_token"]["id_token"] == "TAG-7"


def test_TC_F_03_CS_remote_stop(rig):
    tx = _plug(rig)
    mark = rig.csms.mark()
    kind, res = rig.request(call.RequestStopTransaction(transaction_id="not-" + tx[4:]))
    assert res["status"] == "Rejected"
    kind, res = rig.request(call.RequestStopTransaction(transaction_id=tx))
    assert res["status"] == "Accepted"
    ev = rig.csms.wait_for("TransactionEvent", lambda kw: kw["event_type"] == "Ended", after=mark)
    assert ev["trigger_reason"] == "RemoteStop" and ev["transaction_info"]["stopped_reason"] == "Remote"
    assert ev["transaction_info"]["charging_state"] == "EVConnected"


# ---------------------------------------------------------------------------- K SmartCharging

def _profile(pid, periods, stack_level=0, purpose="TxDefaultProfile"):
    return {"id": pid, "stack_level": stack_level, "charging_profile_purpose": purpose,
            "charging_profile_kind": "Relative",
            "charging_schedule": [{"id": 1, "charging_rate_unit": "A", "charging_schedule_period": [
                {"start_period": 60 * i, "limit": lim} for i, lim in enumerate(periods)]}]}


def test_K01_a_profile_with_more_periods_than_the_station_advertises_is_rejected(rig):
    (r,) = _get(rig, ("SmartChargingCtrlr", "PeriodsPerSchedule"))
    assert int(r["attributeValue"]) == PERIODS_PER_SCHEDULE
    kind, res = rig.request(call.SetChargingProfile(evse_id=1, charging_profile=_profile(
        1, [10.0] * (PERIODS_PER_SCHEDULE + 1))))
    assert res["status"] == "Rejected" and "PeriodsPerSchedule" in res["statusInfo"]["additionalInfo"]
    kind, res = rig.request(call.SetChargingProfile(evse_id=1, charging_profile=_profile(2, [10.0], stack_level=99)))
    assert res["status"] == "Rejected" and res["statusInfo"]["reasonCode"] == "InvalidStackLevel"
    assert rig.st.smart_charging.profiles.profiles == {} and rig.ctl.plans == []
    kind, res = rig.request(call.SetChargingProfile(evse_id=1, charging_profile=_profile(3, [10.0] * PERIODS_PER_SCHEDULE)))
    assert res["status"] == "Accepted"


def test_K08_discharge_beyond_the_controller_is_clamped_and_the_composite_schedule_says_so(rig):
    kind, res = rig.request(call.SetChargingProfile(evse_id=1, charging_profile=_profile(1, [-40.0])))
    assert res["status"] == "Accepted"
    assert rig.ctl.plans[-1]["discharge_a"] == 16.0       # the controller's MAX_DISCHARGE_AMPS
    kind, res = rig.request(call.GetCompositeSchedule(duration=300, evse_id=1, charging_rate_unit="A"))
    assert res["status"] == "Accepted"
    assert res["schedule"]["chargingSchedulePeriod"][0]["limit"] == -16.0
    kind, res = rig.request(call.GetCompositeSchedule(duration=300, evse_id=1, charging_rate_unit="W"))
    assert res["schedule"]["chargingSchedulePeriod"][0]["limit"] == -16.0 * 230


# ---------------------------------------------------------------------------- L Firmware

def test_TC_L_06_CS_invalid_signature_is_found_before_installing_and_is_a_security_event(rig, tmp_path, monkeypatch):
    """L01.FR.03: Downloading, Downloaded, InvalidSignature (nothing Installing) and a
    SecurityEventNotification InvalidFirmwareSignature. The controller checks the signature
    as the bundle reaches it (host_tools/fota.py)."""
    from host_tools import fota
    bundle = tmp_path / "forged.v2gb"
    bundle.write_bytes(b"V2GB" + bytes(64))

    def refuse(client, data, **_):
        raise fota.FotaError("refused at offset 0: signature: COSE_Sign1 does not verify", "V2G-601")
    monkeypatch.setattr(fota, "transfer", refuse)
    monkeypatch.setattr(fota, "bundle_id", lambda data: b"x" * 16)
    rig.ctl.fota = fota.bridge_updater(object())
    rig.st.firmware.allow_file_updates = True
    mark = rig.csms.mark()
    kind, res = rig.request(call.UpdateFirmware(request_id=6, firmware={
        "location": bundle.as_uri(), "retrieve_date_time": "2026-01-01T00:00:00Z"}))
    assert res["status"] == "Accepted"
    ev = rig.csms.wait_for("SecurityEventNotification", lambda kw: kw["type"] == "InvalidFirmwareSignature",
                           after=mark)
    assert "forged.v2gb" in ev["tech_info"]
    seen = [kw["status"] for kw in rig.csms.messages("FirmwareStatusNotification", after=mark)]
    assert seen == ["Downloading", "Downloaded", "InvalidSignature"]


# ---------------------------------------------------------------------------- Part 4: bad input

def _frame(rig, text, uid, action=None):
    return rig.csms.send_frame(STATION, text, uid, action)


@pytest.mark.parametrize("payload, code, field", [
    ({"getVariableData": [{"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": 7}}]},
     "TypeConstraintViolation", "getVariableData[0].variable.name"),
    ({"getVariableData": [{"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "x" * 51}}]},
     "TypeConstraintViolation", "getVariableData[0].variable.name"),
    ({"getVariableData": [{"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"},
                           "attributeType": "Maximum"}]},
     "PropertyConstraintViolation", "getVariableData[0].attributeType"),
    ({"getVariableData": [{"component": {"name": "OCPPCommCtrlr"}}]},
     "OccurrenceConstraintViolation", "getVariableData[0].variable"),
    ({"getVariableData": []}, "OccurrenceConstraintViolation", "getVariableData"),
    ({"getVariableData": [{"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}}],
      "colour": "red"}, "ProtocolError", ""),
])
def test_part4_a_malformed_get_variables_gets_the_callerror_of_its_fault(rig, payload, code, field):
    ans = _frame(rig, json.dumps([2, "bad-1", "GetVariables", payload]), "bad-1")
    assert ans[:3] == [4, "bad-1", code], ans
    assert ans[4].get("field", "") == field


def test_part4_frames_that_are_no_request_and_actions_the_station_does_not_have(rig):
    assert _frame(rig, "[2, \"f1\", \"GetVariables\", [1, 2]]", "f1")[2] == "FormatViolation"
    assert _frame(rig, "[2, \"f2\", \"NoSuchAction\", {}]", "f2")[2] == "NotImplemented"
    assert _frame(rig, "[2, \"f3\", \"ReserveNow\", {}]", "f3")[2] == "NotSupported"     # 2.0.1, not here
    assert _frame(rig, "[2, \"f4\", \"BootNotification\", {}]", "f4")[2] == "NotImplemented"  # not to a station
    assert _frame(rig, "[7, \"f5\", \"Reset\", {}]", "f5")[2] == "MessageTypeNotSupported"
    assert _frame(rig, "[2, \"f6\", 12, {}]", "f6")[2] == "RpcFrameworkError"
    assert _frame(rig, "[2, \"f7\", \"../../etc/passwd\", {}]", "f7")[2] == "RpcFrameworkError"
    assert _frame(rig, "this is not json", "-1")[:3] == [4, "-1", "RpcFrameworkError"]
    # the session survives all of it
    assert _get(rig, ("OCPPCommCtrlr", "HeartbeatInterval"))[0]["attributeStatus"] == "Accepted"


def test_part4_a_bad_request_changes_nothing(rig):
    """The handler never runs for a request that fails its schema: nothing is set or stored."""
    bad_set = {"setVariableData": [
        {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "OfflineThreshold"}, "attributeValue": "5"},
        {"component": {"name": "V2GController"}, "variable": {"name": "MAX_CHARGE_AMPS"}, "attributeValue": 6}]}
    assert _frame(rig, json.dumps([2, "s1", "SetVariables", bad_set]), "s1")[2] == "TypeConstraintViolation"
    bad_profile = {"evseId": 1, "chargingProfile": {
        "id": 1, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile", "chargingProfileKind": "Relative",
        "validTo": "zzz", "chargingSchedule": [{"id": 1, "chargingRateUnit": "A",
                                                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 6}]}]}}
    assert _frame(rig, json.dumps([2, "s2", "SetChargingProfile", bad_profile]), "s2")[2] == "TypeConstraintViolation"
    bad_reset = {"type": "Sideways"}
    assert _frame(rig, json.dumps([2, "s3", "Reset", bad_reset]), "s3")[2] == "PropertyConstraintViolation"
    got = _get(rig, ("OCPPCommCtrlr", "OfflineThreshold"), ("V2GController", "MAX_CHARGE_AMPS"))
    assert [g["attributeValue"] for g in got] == ["60", "32"]
    assert rig.st.smart_charging.profiles.profiles == {} and rig.ctl.plans == []
    assert ("config_set", {"MAX_CHARGE_AMPS": 6}) not in rig.ctl.commands
    assert rig.csms.messages("BootNotification")[-1]["reason"] == "PowerUp"    # no reset happened


# ---------------------------------------------------------------------------- a connection that stays up

def test_part4_silent_drops_are_detected_by_ping_and_no_transaction_event_is_lost_or_doubled(tmp_path):
    """Part 4 §5: WebSocket ping every WebSocketPingInterval; a link that silently stops carrying
    traffic (no FIN, no RST) is found dead within the interval plus the pong timeout, the
    station reconnects with the RetryBackOff* back-off and sends what it queued, in order,
    once. Three drops, each while events are being produced."""
    r = Rig(tmp_path, proxy=True)
    try:
        assert r.set_vars(("OCPPCommCtrlr", "WebSocketPingInterval", 1), ("OCPPCommCtrlr", "RetryBackOffWaitMinimum", 1),
                          ("OCPPCommCtrlr", "RetryBackOffRandomRange", 0)) == ["Accepted"] * 3
        tx = _plug(r)
        n = 0
        for _ in range(3):
            r.wait(lambda: len(r.st.transactions.queue) == 0, what="the queue drained")
            dead_before, boots = r.st.dead_links, len(r.csms.messages("BootNotification"))
            t0 = time.monotonic()
            r.proxy.drop()
            for _i in range(2):                     # events while the link is dead
                n += 1
                r.sample(mode="paused" if n % 2 else "charging")
            r.wait(lambda d=dead_before: r.st.dead_links > d, 5, "the dead link noticed")
            detect_s = time.monotonic() - t0
            assert detect_s < 1 + r.st.pong_timeout() + 1.0, detect_s    # interval + pong timeout (+ a loaded machine)
            r.wait(lambda: not r.st.connected.is_set(), 5, "the session ended")
            r.proxy.restore()
            r.wait(lambda b=boots: len(r.csms.messages("BootNotification")) > b, 10, "the reconnect")
        r.wait(lambda: len(r.st.transactions.queue) == 0, what="the queue drained")
        seqs = [kw["seq_no"] for kw in r.csms.messages("TransactionEvent")
                if kw["transaction_info"]["transaction_id"] == tx]
        assert seqs == list(range(7)), seqs           # Started + 6 updates: each once, in order
        late = [kw for kw in r.csms.messages("TransactionEvent") if kw["seq_no"] > 0]
        assert all(kw.get("offline") is not True for kw in late)  # queued while it seemed connected
        assert r.st.dead_links == 3 and "CSMS link dead" in r.log.text()
    finally:
        r.close()


def test_the_tests_csms_refuses_station_frames_that_break_the_schemas():
    """The check every test here relies on: a frame of the station that breaks its schema is
    recorded (and fails the test when the CSMS closes)."""
    from ocpp_csms import Csms

    class Cp:
        id, version = STATION, "ocpp2.0.1"
        sent_actions = {"a1": "GetVariables", "a2": "GetVariables"}
    csms = Csms(versions=("ocpp2.0.1",))
    try:
        ok = {"getVariableResult": [{"attributeStatus": "Accepted", "attributeType": "Actual",
                                     "component": {"name": "C"}, "variable": {"name": "V"}}]}
        csms._check_frame(Cp, json.dumps([3, "a1", ok]))
        assert csms.violations == []
        bad = {"getVariableResult": [{"attributeStatus": "Fine", "component": {"name": "C"}, "variable": {}}]}
        csms._check_frame(Cp, json.dumps([3, "a2", bad]))
        csms._check_frame(Cp, json.dumps([2, "b1", "Heartbeat", {"extra": 1}]))
        csms._check_frame(Cp, json.dumps([2, "b2", "SecurityEventNotification",
                                          {"type": "X", "timestamp": "yesterday"}]))
        csms._check_frame(Cp, json.dumps([4, "b3", "Oops", "", {}]))
        text = " ".join(v for _, v in csms.violations)
        for what in ("GetVariablesResponse", "'Fine'", "'name' is a required", "HeartbeatRequest",
                     "yesterday", "Oops"):
            assert what in text, (what, text)
        with pytest.raises(AssertionError):
            csms.assert_schemas()
    finally:
        csms.violations.clear()
        csms.close()
