"""`v2g bridge` end to end with OCPP 1.6J: the virtual board (the firmware on its simulated
plant), the bridge as a process offering 2.1, 2.0.1 and 1.6, a CSMS that speaks only 1.6
(the `ocpp` package's v16 module, every message checked against its 1.6 schemas) and a
real Mosquitto broker for the app's status. One charging session, as a station's day."""

import json
import ssl
import threading

import paho.mqtt.client as mqtt
import pytest
from bridge_helpers import Broker, BridgeProc, Plant, make_ca, stop_all, wait_until
from ocpp16_csms import Csms16
from paho.mqtt.enums import CallbackAPIVersion
from vboard_fixture import RunningBoard

STATION = "CS-16-VB"


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bridge16")
    cfg = tmp / "etc"
    cfg.mkdir(mode=0o750)
    (cfg / "app_jwt.secret").write_text("app-secret-for-tests-0123456789abcdef")
    (cfg / "app_jwt.secret").chmod(0o600)
    ca_key, ca_cert, ca_path = make_ca(tmp)
    (cfg / "mqtt_ca.pem").write_bytes(ca_path.read_bytes())
    (cfg / "mqtt_ca.pem").chmod(0o644)
    (cfg / "mqtt_password").write_text("bridge-pw")
    (cfg / "mqtt_password").chmod(0o600)
    started = []
    try:
        board = RunningBoard(tmp / "board")
        started.append(board.stop)
        broker = Broker(tmp / "broker", ca_key, ca_cert, ca_path, {"v2g-bridge": "bridge-pw", "app": "app-pw"},
                        apps={"app": STATION})
        started.append(broker.stop)
        csms = Csms16(versions=("ocpp1.6",), heartbeat_s=2).start()
        started.append(csms.close)
        statuses, tel = [], []
        got = threading.Event()
        app = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="app16", protocol=mqtt.MQTTv5)
        app.username_pw_set("app", "app-pw")
        app.tls_set_context(ssl.create_default_context(cafile=str(ca_path)))

        def on_message(_c, _u, m):
            if m.topic.endswith(("/status", "/telemetry")):
                (statuses if m.topic.endswith("/status") else tel).append(json.loads(m.payload))
            got.set()
        app.on_message = on_message
        app.on_connect = lambda c, *a: c.subscribe(f"v2g/{STATION}/#", qos=1)
        app.connect("127.0.0.1", broker.port)
        app.loop_start()
        started.append(app.loop_stop)
        bridge = BridgeProc(board.endpoints["link"], csms.url, STATION, cfg, tmp / "log", tmp / "state",
                            "--mqtt", f"mqtts://v2g-bridge@127.0.0.1:{broker.port}", "--tel-batch", "1",
                            "--retry-backoff", "0.3,0.3,2")
        started.append(bridge.stop)
        plant = Plant(board.endpoints["plant"])
        started.append(plant.close)
        yield {"csms": csms, "bridge": bridge, "plant": plant, "statuses": statuses, "tel": tel}
    finally:
        stop_all(started)
        assert csms.schema_failures == []


def _req(csms, action, payload):
    kind, res = csms.request16(STATION, action, payload, timeout=30)
    assert kind == "result", (action, kind, res)
    return res


def test_a_16_charging_session_on_the_virtual_board(rig):
    csms, plant, bridge = rig["csms"], rig["plant"], rig["bridge"]
    boot = csms.wait_for("BootNotification", timeout=40)
    assert boot["firmwareVersion"] == "0.1.0" and csms.picked[STATION] == "ocpp1.6"
    csms.wait_for("StatusNotification", lambda p: p["connectorId"] == 1 and p["status"] == "Available")
    # ChangeConfiguration of a v2g_vars.json key: the controller validates
    assert _req(csms, "ChangeConfiguration", {"key": "MAX_CHARGE_AMPS", "value": "9999"}) == {"status": "Rejected"}
    assert _req(csms, "ChangeConfiguration", {"key": "MeterValueSampleInterval", "value": "1"}) == \
        {"status": "Accepted"}
    keys = {k["key"]: k["value"] for k in _req(csms, "GetConfiguration", {"key": ["MAX_CHARGE_AMPS"]})[
        "configurationKey"]}
    assert float(keys["MAX_CHARGE_AMPS"]) < 9999
    # the IEEE 1547 enter-service wait (300 s) shortened, as the 2.0.1 end-to-end test does
    fast = all(_req(csms, "ChangeConfiguration", {"key": k, "value": "1"}) == {"status": "Accepted"}
               for k in ("GRID_ENTER_SERVICE_DELAY_S", "GRID_RAMP_S"))
    mark = csms.mark()
    plant.do("plug")
    start = csms.wait_for("StartTransaction", after=mark, timeout=20)
    assert start["idTag"] == STATION
    plant.do("ev_ready")
    mv = csms.wait_for("MeterValues", lambda p: "transactionId" in p, after=mark, timeout=20)
    tx_id = mv["transactionId"]
    # a charge profile reaches the controller with a discharge limit of 0 from the CSMS
    prof = {"chargingProfileId": 1, "stackLevel": 0, "chargingProfilePurpose": "TxProfile",
            "chargingProfileKind": "Relative", "transactionId": tx_id,
            "chargingSchedule": {"chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 10}]}}
    assert _req(csms, "SetChargingProfile", {"connectorId": 1, "csChargingProfiles": prof}) == {"status": "Accepted"}
    assert "CSMS plan applied: {'charge_a': 10.0, 'discharge_a': 0.0, 'direction': None}" in bridge.log_text()
    assert fast, "the firmware takes GRID_ENTER_SERVICE_DELAY_S / GRID_RAMP_S"
    s = wait_until(lambda: next((x for t in reversed(rig["tel"]) for x in t["samples"]
                                 if x.get("lim_chg_src") == "csms"), None), 30, "a CSMS charge limit")
    assert s["lim_chg_ma"] == 10000 and s["lim_dis_ma"] == 0
    # discharge asked in 1.6 terms (a negative limit): Rejected, the controller stays charge-only
    neg = dict(prof, chargingProfileId=2, stackLevel=1, chargingSchedule={
        "chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": -10}]})
    assert _req(csms, "SetChargingProfile", {"connectorId": 1, "csChargingProfiles": neg}) == {"status": "Rejected"}
    assert "V2G-302" in bridge.log_text()
    st = wait_until(lambda: next((x for x in reversed(rig["statuses"]) if x.get("ocpp") == "1.6"), None), 20,
                    "a status naming OCPP 1.6")
    assert st["v2g"] == {"available": False,
                         "reason": "V2G-302 the CSMS speaks OCPP 1.6: discharge needs 2.0.1 or later"}
    assert _req(csms, "RemoteStopTransaction", {"transactionId": tx_id}) == {"status": "Accepted"}
    stop = csms.wait_for("StopTransaction", after=mark, timeout=20)
    assert stop["transactionId"] == tx_id and stop["reason"] == "Remote"
    assert stop["meterStop"] >= start["meterStart"]
    plant.do("unplug")
    csms.wait_for("StatusNotification", lambda p: p["connectorId"] == 1 and p["status"] == "Available",
                  after=mark, timeout=20)
    assert csms.schema_failures == []
