"""Security profiles towards the CSMS (1: ws + Basic Auth, 2: wss + Basic Auth, 3: wss +
client certificate) with a self-made CA, OCPP 2.0.1 only, the handshake timeout log line,
and the broker's TLS 1.3-only listener from deploy/mosquitto/v2g.conf."""

import socket
import ssl
import threading
import time

import pytest
from bridge_helpers import Broker, BridgeProc, Plant, make_ca, make_leaf, wait_until
from ocpp.v201 import call
from ocpp_csms import Csms
from vboard_fixture import RunningBoard

BACKOFF = ("--retry-backoff", "0.3,0.3,1")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert, ca_path = make_ca(tmp)
    srv_cert, srv_key = make_leaf(tmp, ca_key, ca_cert, "csms")
    cli_cert, cli_key = make_leaf(tmp, ca_key, ca_cert, "station", server=False)
    return {"tmp": tmp, "ca_key": ca_key, "ca_cert": ca_cert, "ca": ca_path, "srv": (srv_cert, srv_key),
            "cli": (cli_cert, cli_key)}


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    b = RunningBoard(tmp_path_factory.mktemp("sboard") / "board")
    yield b
    b.stop()


def _cfg(tmp, files):
    d = tmp / "etc"
    d.mkdir(mode=0o750)
    for name, data in files.items():
        (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())
        (d / name).chmod(0o600)
    return d


def _server_ctx(pki, client_cert=False):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*pki["srv"])
    if client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(str(pki["ca"]))
    return ctx


def test_profile_1_ws_basic_auth(board, tmp_path):
    csms = Csms(password="0123456789abcdef").start()               # ws://, checks Basic Auth
    cfg = _cfg(tmp_path, {"csms_password": "0123456789abcdef"})
    bridge = BridgeProc(board.endpoints["link"], csms.url, "CS-P1", cfg, tmp_path / "log", tmp_path / "state",
                        *BACKOFF)                                      # profile guessed: ws + password -> 1
    try:
        assert csms.url.startswith("ws://")
        boot = csms.wait_for("BootNotification", timeout=30)
        assert boot["charging_station"]["firmware_version"] == "0.1.0"
        assert csms.auth_failures == 0 and "CS-P1" in csms.stations
        assert "without security" not in bridge.log_text()
    finally:
        bridge.stop()
    # the same CSMS refuses a wrong password, and a bridge that sends none (profile 0)
    try:
        for name, files in (("wrong", {"csms_password": "not-the-password"}), ("none", {})):
            d = tmp_path / name
            d.mkdir()
            before = csms.auth_failures
            bridge = BridgeProc(board.endpoints["link"], csms.url, "CS-P1", _cfg(d, files), d / "log",
                                tmp_path / "state", *BACKOFF)
            try:
                wait_until(lambda b=before: csms.auth_failures >= b + 2, 20, f"{name}: two refused connections")
                assert len(csms.messages("BootNotification")) == 1
            finally:
                bridge.stop()
    finally:
        csms.close()


def test_profile_2_wss_basic_auth_with_own_ca_and_ocpp_201_discharge(pki, board, tmp_path):
    csms = Csms(versions=("ocpp2.0.1",), password="0123456789abcdef", ssl=_server_ctx(pki)).start()
    cfg = _cfg(tmp_path, {"csms_password": "0123456789abcdef", "csms_ca.pem": pki["ca"].read_bytes()})
    bridge = BridgeProc(board.endpoints["link"], csms.url, "CS-P2", cfg, tmp_path / "log", tmp_path / "state",
                        "--ocpp", "2.0.1", *BACKOFF)
    plant = Plant(board.endpoints["plant"])
    try:
        boot = csms.wait_for("BootNotification", timeout=30)
        assert boot["charging_station"]["firmware_version"] == "0.1.0"
        assert csms.stations["CS-P2"].version == "ocpp2.0.1"
        plant.do("plug")
        started = csms.wait_for("TransactionEvent", lambda p: p["event_type"] == "Started")
        # 2.0.1: a negative limit asks for discharge
        profile = {"id": 9, "stack_level": 0, "charging_profile_purpose": "TxProfile",
                   "charging_profile_kind": "Relative",
                   "transaction_id": started["transaction_info"]["transaction_id"],
                   "charging_schedule": [{"id": 1, "charging_rate_unit": "A",
                                          "charging_schedule_period": [{"start_period": 0, "limit": -8.0}]}]}
        kind, res = csms.request("CS-P2", call.SetChargingProfile(evse_id=1, charging_profile=profile))
        assert res["status"] == "Accepted", res
        assert "'discharge_a': 8.0, 'direction': 'discharge'" in bridge.log_text()
        kind, res = csms.request("CS-P2", call.GetCompositeSchedule(duration=300, evse_id=1))
        assert res["schedule"]["chargingSchedulePeriod"][0]["limit"] == -8.0
        # a profile with a date that is none is refused and not kept: the CSMS keeps control
        bad = {**profile, "id": 10, "stack_level": 1, "charging_profile_purpose": "TxDefaultProfile",
               "valid_to": "zzz"}
        del bad["transaction_id"]
        kind, desc = csms.request("CS-P2", call.SetChargingProfile(evse_id=1, charging_profile=bad))
        assert kind == "TypeConstraintViolation" and "chargingProfile.validTo" in desc, (kind, desc)
        kind, res = csms.request("CS-P2", call.ClearChargingProfile(charging_profile_id=9))
        assert res["status"] == "Accepted"
        assert "CSMS plan applied: None" in bridge.log_text()             # the controller's limits cleared
        plant.do("unplug")
        csms.wait_for("TransactionEvent", lambda p: p["event_type"] == "Ended")
    finally:
        plant.close()
        bridge.stop()
        csms.close()
    # a wrong password is refused by the CSMS and the bridge keeps retrying (logged)
    csms = Csms(versions=("ocpp2.0.1",), password="the-right-one-000", ssl=_server_ctx(pki)).start()
    bridge = BridgeProc(board.endpoints["link"], csms.url, "CS-P2", cfg, tmp_path / "log2", tmp_path / "state",
                        *BACKOFF)
    try:
        wait_until(lambda: csms.auth_failures >= 2, 20, "two refused connections")
        assert not csms.messages("BootNotification")
        assert "connection failed" in bridge.log_text()
    finally:
        bridge.stop()
        csms.close()


def test_profile_3_client_certificate(pki, board, tmp_path):
    csms = Csms(ssl=_server_ctx(pki, client_cert=True)).start()
    cert, key = pki["cli"]
    cfg = _cfg(tmp_path, {"csms_ca.pem": pki["ca"].read_bytes(), "client_cert.pem": cert.read_bytes(),
                          "client_key.pem": key.read_bytes()})
    bridge = BridgeProc(board.endpoints["link"], csms.url, "CS-P3", cfg, tmp_path / "log", tmp_path / "state",
                        "--security-profile", "3", *BACKOFF)
    try:
        csms.wait_for("BootNotification", timeout=30)
        assert csms.stations["CS-P3"].version == "ocpp2.1"
    finally:
        bridge.stop()
        csms.close()


def test_handshake_timeout_is_logged(board, tmp_path):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    held = []
    stop = threading.Event()

    def accept():   # accepts TCP and then says nothing: the WebSocket handshake never completes
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                pass

    threading.Thread(target=accept, daemon=True).start()
    cfg = _cfg(tmp_path, {})
    url = "ws://127.0.0.1:{}/ocpp".format(srv.getsockname()[1])
    bridge = BridgeProc(board.endpoints["link"], url, "CS-HT", cfg, tmp_path / "log", tmp_path / "state",
                        "--handshake-timeout", "1", *BACKOFF)
    try:
        line = wait_until(lambda: [x for x in bridge.log_text().splitlines() if "ERR_V2G_HANDSHAKE_TIMEOUT" in x],
                          20, "handshake timeout line")[0]
        assert " V2G-140 CS-HT ERR_V2G_HANDSHAKE_TIMEOUT" in line
        # ws:// and no csms_password: profile 0, said loudly at start
        assert "WARNING - CSMS ws://127.0.0.1:{}/ocpp without security (profile 0)".format(
            srv.getsockname()[1]) in bridge.log_text()
    finally:
        bridge.stop()
        stop.set()
        for c in held:
            c.close()
        srv.close()


def test_broker_speaks_tls_13_only(pki, tmp_path):
    broker = Broker(tmp_path / "broker", pki["ca_key"], pki["ca_cert"], pki["ca"], {"u": "p"})
    try:
        assert "tls_version tlsv1.3" in broker.conf_text
        ctx = ssl.create_default_context(cafile=str(pki["ca"]))
        with socket.create_connection(("127.0.0.1", broker.port), 5) as s:
            with ctx.wrap_socket(s, server_hostname="127.0.0.1") as tls:
                assert tls.version() == "TLSv1.3"
        old = ssl.create_default_context(cafile=str(pki["ca"]))
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        with socket.create_connection(("127.0.0.1", broker.port), 5) as s:
            with pytest.raises(ssl.SSLError):
                old.wrap_socket(s, server_hostname="127.0.0.1")
    finally:
        broker.stop()
    time.sleep(0)
