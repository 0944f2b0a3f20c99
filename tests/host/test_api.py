"""`v2g api` against a real OAuth 2.0 provider (npm oidc-provider), a real Mosquitto with the
shipped configuration and ACL, and a stand-in for the bridge on the bridge's account that
checks each command's token as the bridge does and answers with the MQTT 5 correlation data.
Covers every endpoint's bad input (422 naming the field, nothing sent), every token failure
(401 V2G-401) and refusal (403 V2G-403), and every Idempotency-Key case."""

import json
import ssl
import threading
import time
import uuid

import jwt
import paho.mqtt.client as mqtt
import pytest
from api_helpers import AUDIENCE, ApiProc, OidcProvider, api_acl_block, call
from bridge_helpers import Broker, make_ca, stop_all, wait_until
from cryptography.hazmat.primitives.asymmetric import ec
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from host_tools.bridge.auth import AuthError, TokenVerifier

SECRET = "gateway-app-secret-0123456789abcdef"
USERS = {"v2g-bridge": "bridge-pw", "v2g-api": "api-pw", "v2g-api-2": "api2-pw"}
PW = "client-secret-0123456789-0123456789"
CLIENTS = [
    {"client_id": "driver-1", "client_secret": PW, "scope": "v2g:read v2g:control", "stations": ["CS-A1"]},
    {"client_id": "driver-2", "client_secret": PW, "scope": "v2g:read v2g:control", "stations": ["CS-A2"]},
    {"client_id": "viewer", "client_secret": PW, "scope": "v2g:read", "stations": ["CS-A1"]},
    {"client_id": "operator", "client_secret": PW, "scope": "v2g:read v2g:admin", "stations": []},
]


class FakeBridge:
    """The bridge's side of the app channel for two stations, without controllers."""

    def __init__(self, port, ca):
        self.cmds = []
        self.delay_s = 0.0
        self.answer = None          # fn(cmd) -> result dict, or None for ok
        self.verifiers = {st: TokenVerifier(SECRET, "HS256", st) for st in ("CS-A1", "CS-A2")}
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="v2g-bridge", protocol=mqtt.MQTTv5)
        c.username_pw_set("v2g-bridge", USERS["v2g-bridge"])
        c.tls_set_context(ssl.create_default_context(cafile=str(ca)))
        c.on_message = self._on
        up = threading.Event()
        c.on_connect = lambda *a: up.set()
        c.connect("127.0.0.1", port)
        c.loop_start()
        assert up.wait(10)
        c.subscribe("v2g/+/cmd", qos=1)
        self.c = c
        for st in self.verifiers:
            self.status(st)

    def status(self, st, **over):
        doc = {"station": st, "online": True, "mode": "charging", "cp": "C", "soc_pct": 55.0, "power_w": 3680,
               "errors": [], "v2g": {"available": True, "reason": None}, "target_pct": 80.0, "floor_pct": 20.0,
               "charge_only": False, "stopped": False, "operative": True, "limits": None, "gateway": None, **over}
        self.c.publish(f"v2g/{st}/status", json.dumps(doc), qos=1, retain=True).wait_for_publish(5)

    def telemetry(self, st, samples, ts=None):
        ts = int(time.time() * 1000) if ts is None else ts
        self.c.publish(f"v2g/{st}/telemetry", json.dumps({"station": st, "ts": ts,
                                                           "samples": samples}), qos=1).wait_for_publish(5)

    def event(self, st, ts, code, on, msg):
        self.c.publish(f"v2g/{st}/events", json.dumps({"station": st, "ts": ts, "t_ms": 1, "code": code, "on": on,
                                                        "msg": msg}), qos=1).wait_for_publish(5)

    def _on(self, cl, ud, m):
        st = m.topic.split("/")[1]
        cmd = json.loads(m.payload)
        corr = m.properties.CorrelationData
        try:
            claims = self.verifiers[st].verify(cmd.get("token"))
        except AuthError as e:
            res = {"txn": cmd.get("txn"), "ok": False, "code": "V2G-401", "msg": str(e), "data": {}}
        else:
            self.cmds.append((st, cmd, claims))
            res = (self.answer(cmd) if self.answer else None) or \
                {"txn": cmd["txn"], "ok": True, "code": None, "msg": "done", "data": dict(cmd["args"])}

        def reply():
            time.sleep(self.delay_s)
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = corr
            self.c.publish(f"v2g/{st}/cmd/result", json.dumps(res), qos=1, properties=props)
        threading.Thread(target=reply, daemon=True).start()

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api")
    ca_key, ca_cert, ca_path = make_ca(tmp)
    cfg = tmp / "etc"
    cfg.mkdir(mode=0o750)
    (cfg / "app_jwt.secret").write_text(SECRET)
    (cfg / "mqtt_password").write_text(USERS["v2g-api"])
    for f in ("app_jwt.secret", "mqtt_password"):
        (cfg / f).chmod(0o600)
    (cfg / "mqtt_ca.pem").write_bytes(ca_path.read_bytes())
    started = []
    try:
        broker = Broker(tmp / "broker", ca_key, ca_cert, ca_path, USERS, acl_extra=api_acl_block("v2g-api-2"))
        started.append(broker.stop)
        oidc = OidcProvider(tmp, clients=CLIENTS)
        started.append(oidc.stop)
        bridge = FakeBridge(broker.port, ca_path)
        started.append(bridge.close)
        api = ApiProc(tmp, f"mqtts://v2g-api@127.0.0.1:{broker.port}", oidc.issuer, cfg, "--command-timeout", "3")
        started.append(lambda: r["api"].stop())
        r = {"api": api, "oidc": oidc, "bridge": bridge, "broker": broker, "cfg": cfg, "tmp": tmp,
             "tok": {c["client_id"]: oidc.token(c["client_id"], c["scope"]) for c in CLIENTS}}
        wait_until(lambda: call(api.url + "/api/v1/stations/CS-A1", token=r["tok"]["driver-1"])[1]["online"],
                   10, "station status at the API")
        yield r
    finally:
        stop_all(started)


def url(r, path):
    return r["api"].url + "/api/v1" + path


def key():
    return str(uuid.uuid4())


# ---------------------------------------------------------------- reads

def test_a_driver_sees_only_the_stations_assigned_to_them(rig):
    s, doc, _ = call(url(rig, "/stations"), token=rig["tok"]["driver-1"])
    assert s == 200 and [x["station"] for x in doc["stations"]] == ["CS-A1"]
    s, doc, _ = call(url(rig, "/stations/CS-A1"), token=rig["tok"]["driver-1"])
    assert s == 200
    assert doc["soc_pct"] == 55.0 and doc["floor_pct"] == 20.0 and doc["v2g"]["available"] is True
    assert doc["v2g"]["text"] == "V2G available"
    assert doc["online"] is True and doc["pilot"] == "C" and doc["last_seen"]
    for path in ("", "/sessions", "/telemetry", "/events"):
        s, doc, _ = call(url(rig, "/stations/CS-A2" + path), token=rig["tok"]["driver-1"])
        assert (s, doc["code"]) == (403, "V2G-403"), path
        assert "CS-A2 is not assigned to driver-1" in doc["detail"]
    s, doc, _ = call(url(rig, "/stations"), token=rig["tok"]["operator"])     # v2g:admin sees all
    assert s == 200 and {"CS-A1", "CS-A2"} <= {x["station"] for x in doc["stations"]}


def test_errors_and_the_reason_v2g_is_unavailable_come_in_plain_words(rig):
    b, tok = rig["bridge"], rig["tok"]["driver-1"]
    b.status("CS-A1", errors=["V2G-120"], v2g={"available": False, "reason": "V2G-120 meter stale"})
    try:
        st = wait_until(lambda: (lambda d: d if d["errors"] else None)(
            call(url(rig, "/stations/CS-A1"), token=tok)[1]), 10, "the error")
        assert st["errors"] == [{"code": "V2G-120", "meaning": "the energy meter does not answer: no discharge",
                                 "action": "Call service if it stays."}]
        assert st["v2g"]["text"] == "V2G unavailable: the energy meter does not answer: no discharge"
        b.status("CS-A1", soc_pct=21.0, v2g={"available": False,
                                             "reason": "V2G-301 SoC at or below the floor + V2G_AVAILABLE_MARGIN"})
        wait_until(lambda: call(url(rig, "/stations/CS-A1"), token=tok)[1]["v2g"]["text"]
                   == "V2G unavailable: battery at or below your reserve", 10, "V2G-301 in plain words")
    finally:
        b.status("CS-A1")


def test_telemetry_is_stored_downsampled_and_sessions_are_made_from_it(rig):
    b = rig["bridge"]
    samples = [{"t_ms": 1000 * i, "cp": "C" if i < 8 else "A", "mode": "discharging", "soc_pm": 600 - i,
                "w": -2000 - 10 * i, "ma": -9000, "mv": 230000, "mhz": 50000, "e_in_wh": 100, "e_out_wh": 50 + i,
                "dis_cap_wh": 9000, "errors": []} for i in range(10)]
    base = (int(time.time()) - 30) * 1000               # the bridge's clock when the vehicle was plugged
    b.telemetry("CS-A1", samples[:5], ts=base + 4000)
    b.telemetry("CS-A1", samples[:5], ts=base + 4000)   # a redelivery: stored once
    b.telemetry("CS-A1", samples[5:], ts=base + 9000)
    tok = rig["tok"]["driver-1"]
    q = "/stations/CS-A1/telemetry?points=2&from={}&to={}".format(
        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(base / 1000)),
        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(base / 1000 + 10)))
    wait_until(lambda: sum(p["samples"] for p in call(url(rig, q), token=tok)[1]["points"]) == 10, 10, "all samples")
    pts = call(url(rig, q), token=tok)[1]["points"]
    assert [p["samples"] for p in pts] == [5, 5]
    assert pts[0]["w_min"] == -2040 and pts[0]["w_max"] == -2000 and pts[0]["w"] == -2020
    st = call(url(rig, "/stations/CS-A1"), token=tok)[1]
    assert st["discharge_capacity_wh"] == 9000 and st["grid_v"] == 230.0 and st["grid_hz"] == 50.0
    assert st["discharge_w"] == 2090 and st["charge_w"] == 0
    ses = call(url(rig, "/stations/CS-A1/sessions"), token=tok)[1]["sessions"]
    assert len(ses) == 1 and ses[0]["end"] is not None
    assert ses[0]["energy_out_wh"] == 7 and ses[0]["soc_start_pct"] == 60.0 and ses[0]["soc_end_pct"] == 59.3
    assert ses[0]["soc_min_pct"] == 59.3 and ses[0]["peak_discharge_w"] == 2070


@pytest.mark.parametrize("query, field", [
    ("telemetry?points=0", "points"), ("telemetry?points=x", "points"), ("telemetry?points=999999", "points"),
    ("telemetry?from=yesterday", "from"), ("telemetry?from=2026-12-05T10:00:00Z&to=2026-12-05T09:00:00Z", "from"),
    ("telemetry?to=soon", "to"), ("sessions?limit=0", "limit"), ("sessions?limit=many", "limit"),
    ("events?limit=1001", "limit"), ("events?from=x", "from")])
def test_bad_history_queries_name_the_field(rig, query, field):
    s, doc, _ = call(url(rig, "/stations/CS-A1/" + query), token=rig["tok"]["driver-1"])
    assert (s, doc["code"]) == (422, "V2G-400") and doc["fields"][0]["field"] == field, doc


def test_a_bad_station_id_is_named(rig):
    s, doc, _ = call(url(rig, "/stations/" + "x" * 49), token=rig["tok"]["driver-1"])
    assert (s, doc["code"], doc["fields"][0]["field"]) == (422, "V2G-400", "sid")


# ---------------------------------------------------------------- tokens

def _forged(rig, **over):
    key_ = ec.generate_private_key(ec.SECP256R1())
    good = jwt.decode(rig["tok"]["driver-1"], options={"verify_signature": False})
    hdr = jwt.get_unverified_header(rig["tok"]["driver-1"])
    claims = {**good, **over}
    return jwt.encode(claims, key_, algorithm="ES256", headers={"kid": hdr["kid"], "typ": "at+jwt"})


def test_every_token_failure_is_401_and_sends_nothing(rig):
    b = rig["bridge"]
    good = jwt.decode(rig["tok"]["driver-1"], options={"verify_signature": False})
    n = len(b.cmds)
    cases = {
        "missing": None,
        "not a JWT": "not-a-token",
        "wrong signature": _forged(rig),
        "alg none": jwt.encode(good, None, algorithm="none"),
        "HS256 with a guessable key": jwt.encode(good, "secret-secret-secret-secret-secret", algorithm="HS256",
                                                 headers={"kid": jwt.get_unverified_header(rig["tok"]["driver-1"])["kid"]}),
        "unknown kid": jwt.encode(good, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256",
                                  headers={"kid": "no-such-key"}),
    }
    for why, tok in cases.items():
        for method, path, body in (("GET", "/stations/CS-A1", None),
                                   ("POST", "/stations/CS-A1/soc-target", {"soc_pct": 30})):
            s, doc, h = call(url(rig, path), method, body, token=tok, key=key())
            assert (s, doc["code"]) == (401, "V2G-401"), (why, doc)
            assert h["WWW-Authenticate"].startswith("Bearer")
    assert len(b.cmds) == n


def test_expired_wrong_audience_and_wrong_issuer_tokens_are_refused_with_the_reason(rig, tmp_path):
    # real tokens of the provider would need a clock change; these are signed by a provider
    # of our own making whose JWKS the API cannot know, so a second provider is used instead
    other = OidcProvider(tmp_path, clients=CLIENTS)
    try:
        s, doc, _ = call(url(rig, "/stations/CS-A1"), token=other.token("driver-1"))
        assert (s, doc["code"]) == (401, "V2G-401") and "unknown key" in doc["detail"]
    finally:
        other.stop()


def test_a_token_without_the_scope_or_the_station_is_403_and_sends_nothing(rig):
    b = rig["bridge"]
    n = len(b.cmds)
    s, doc, _ = call(url(rig, "/stations/CS-A1/charge-only"), "POST", {"on": True}, token=rig["tok"]["viewer"],
                     key=key())
    assert (s, doc["code"]) == (403, "V2G-403") and "v2g:control" in doc["detail"]
    s, doc, _ = call(url(rig, "/stations/CS-A2/charge-only"), "POST", {"on": True}, token=rig["tok"]["driver-1"],
                     key=key())
    assert (s, doc["code"]) == (403, "V2G-403")
    time.sleep(0.3)
    assert len(b.cmds) == n


# ---------------------------------------------------------------- commands and bad input

def test_a_command_reaches_the_station_with_a_command_token_and_the_key_as_its_txn(rig):
    b = rig["bridge"]
    k = key()
    s, doc, h = call(url(rig, "/stations/CS-A1/soc-target"), "POST",
                     {"soc_pct": 40, "departure": "2026-12-05T17:30:00+01:00"}, token=rig["tok"]["driver-1"], key=k)
    assert s == 200 and doc["ok"] and doc["op"] == "soc_target" and h["Idempotency-Key"] == k
    st, cmd, claims = b.cmds[-1]
    assert (st, cmd["op"], cmd["args"]) == ("CS-A1", "soc_target",
                                           {"soc_pct": 40.0, "departure": "2026-12-05T16:30:00+00:00"})
    assert cmd["txn"] == doc["txn"] and len(cmd["txn"]) <= 40
    assert claims["sub"] == "driver-1" and claims["aud"] == "CS-A1" and claims["exp"] - time.time() <= 61
    st = call(url(rig, "/stations/CS-A1"), token=rig["tok"]["driver-1"])[1]
    assert st["departure"] == "2026-12-05T16:30:00+00:00"


@pytest.mark.parametrize("path, body, field", [
    ("soc-target", {"soc_pct": 101}, "soc_pct"),
    ("soc-target", {"soc_pct": -1}, "soc_pct"),
    ("soc-target", {"soc_pct": "half"}, "soc_pct"),
    ("soc-target", {}, "soc_pct"),
    ("soc-target", {"soc_pct": 50, "departure": "tomorrow"}, "departure"),
    ("soc-target", {"soc_pct": 50, "departure": "2026-12-05T17:30:00"}, "departure"),
    ("soc-target", {"soc_pct": 50, "mode": "discharge"}, "mode"),
    ("reserve-margin", {"pct": 150}, "pct"),
    ("reserve-margin", {"percent": 10}, "pct"),
    ("charge-only", {"on": "yes"}, "on"),
    ("charge-only", {"on": 1}, "on"),
    ("charge-only", [True], "body"),
])
def test_bad_command_input_is_422_naming_the_field_and_nothing_is_sent(rig, path, body, field):
    b = rig["bridge"]
    n = len(b.cmds)
    s, doc, _ = call(url(rig, f"/stations/CS-A1/{path}"), "POST", body, token=rig["tok"]["driver-1"], key=key())
    assert (s, doc["code"]) == (422, "V2G-400"), doc
    assert field in [f["field"] for f in doc["fields"]], doc
    time.sleep(0.2)
    assert len(b.cmds) == n


def test_malformed_json_is_422(rig):
    s, doc, _ = call(url(rig, "/stations/CS-A1/charge-only"), "POST", b"{on: true", token=rig["tok"]["driver-1"],
                     key=key())
    assert (s, doc["code"]) == (422, "V2G-400")


def test_a_refusal_by_the_controller_is_passed_on_and_kept(rig):
    b = rig["bridge"]
    b.answer = lambda cmd: {"txn": cmd["txn"], "ok": False, "code": "V2G-301",
                            "msg": "V2G unavailable: SoC 21 % below floor 20 % + margin 5 %", "data": {}}
    try:
        k = key()
        s, doc, _ = call(url(rig, "/stations/CS-A1/soc-target"), "POST", {"soc_pct": 10}, token=rig["tok"]["driver-1"],
                         key=k)
        assert (s, doc["code"], doc["ok"]) == (409, "V2G-301", False) and "floor" in doc["msg"]
    finally:
        b.answer = None
    n = len(b.cmds)
    s2, doc2, _ = call(url(rig, "/stations/CS-A1/soc-target"), "POST", {"soc_pct": 10}, token=rig["tok"]["driver-1"],
                       key=k)
    assert s2 == 409 and doc2["replayed"] and len(b.cmds) == n


# ---------------------------------------------------------------- idempotency

def test_the_same_key_and_body_get_the_stored_response_and_nothing_is_sent_again(rig):
    b = rig["bridge"]
    k = key()
    s1, d1, _ = call(url(rig, "/stations/CS-A1/charge-only"), "POST", {"on": True}, token=rig["tok"]["driver-1"], key=k)
    n = len(b.cmds)
    s2, d2, _ = call(url(rig, "/stations/CS-A1/charge-only"), "POST", {"on": True}, token=rig["tok"]["driver-1"], key=k)
    assert s1 == s2 == 200 and d2["replayed"] is True
    assert {x: d2[x] for x in d1} == d1
    time.sleep(0.3)
    assert len(b.cmds) == n
    # the key survives an API restart (it is in the store, not in memory)
    api = rig["api"]
    api.stop()
    rig["api"] = ApiProc(rig["tmp"], api.args[api.args.index("--mqtt") + 1], rig["oidc"].issuer, rig["cfg"],
                         "--command-timeout", "3", store=api.store)
    s3, d3, _ = call(url(rig, "/stations/CS-A1/charge-only"), "POST", {"on": True}, token=rig["tok"]["driver-1"],
                     key=k)
    assert s3 == 200 and d3["replayed"] and d3["txn"] == d1["txn"]
    time.sleep(0.3)
    assert len(b.cmds) == n


def test_the_same_key_with_another_body_is_422(rig):
    k = key()
    s1, _, _ = call(url(rig, "/stations/CS-A1/reserve-margin"), "POST", {"pct": 5}, token=rig["tok"]["driver-1"], key=k)
    n = len(rig["bridge"].cmds)
    s2, d2, _ = call(url(rig, "/stations/CS-A1/reserve-margin"), "POST", {"pct": 6}, token=rig["tok"]["driver-1"], key=k)
    assert s1 == 200 and (s2, d2["code"]) == (422, "V2G-409") and "another request" in d2["detail"]
    s3, d3, _ = call(url(rig, "/stations/CS-A1/charge-only"), "POST", {"on": False}, token=rig["tok"]["driver-1"], key=k)
    assert (s3, d3["code"]) == (422, "V2G-409")              # another path is another request too
    assert len(rig["bridge"].cmds) == n


def test_the_same_key_while_the_first_is_in_flight_is_409(rig):
    b = rig["bridge"]
    b.delay_s = 1.5
    k = key()
    first = {}
    try:
        t = threading.Thread(target=lambda: first.update(r=call(url(rig, "/stations/CS-A1/charge-only"), "POST",
                                                                {"on": False}, token=rig["tok"]["driver-1"], key=k)))
        t.start()
        wait_until(lambda: b.cmds and b.cmds[-1][1]["args"] == {"on": False}, 5, "first command sent")
        s, doc, _ = call(url(rig, "/stations/CS-A1/charge-only"), "POST", {"on": False}, token=rig["tok"]["driver-1"],
                         key=k)
        assert (s, doc["code"]) == (409, "V2G-409") and "still being processed" in doc["detail"]
        t.join(10)
    finally:
        b.delay_s = 0
    assert first["r"][0] == 200


def test_keys_belong_to_their_user(rig):
    k = key()
    s1, d1, _ = call(url(rig, "/stations/CS-A1/charge-only"), "POST", {"on": False}, token=rig["tok"]["driver-1"], key=k)
    s2, d2, _ = call(url(rig, "/stations/CS-A2/charge-only"), "POST", {"on": False}, token=rig["tok"]["driver-2"], key=k)
    assert s1 == s2 == 200 and "replayed" not in d2 and d1["txn"] != d2["txn"]


@pytest.mark.parametrize("k, why", [(None, "missing"), ("", "1 to 255"), ("x" * 256, "1 to 255"),
                                    ("caf\u00e9", "printable")])
def test_a_post_without_a_usable_key_is_400_and_sends_nothing(rig, k, why):
    n = len(rig["bridge"].cmds)
    h = {} if k is None else {"Idempotency-Key": k.encode("utf-8").decode("latin-1")}
    s, doc, _ = call(url(rig, "/stations/CS-A1/charge-only"), "POST", {"on": True}, token=rig["tok"]["driver-1"],
                     headers=h)
    assert (s, doc["code"]) == (400, "V2G-400") and why in doc["detail"] and "Idempotency-Key" in doc["detail"]
    assert len(rig["bridge"].cmds) == n


def test_no_answer_is_504_and_the_key_may_be_sent_again(rig):
    b = rig["bridge"]
    b.delay_s = 4          # beyond --command-timeout 3
    k = key()
    try:
        s, doc, _ = call(url(rig, "/stations/CS-A1/reserve-margin"), "POST", {"pct": 7}, token=rig["tok"]["driver-1"],
                         key=k)
        assert (s, doc["code"]) == (504, "V2G-110")
    finally:
        b.delay_s = 0
    s, doc, _ = call(url(rig, "/stations/CS-A1/reserve-margin"), "POST", {"pct": 7}, token=rig["tok"]["driver-1"],
                     key=k)
    assert s == 200 and "replayed" not in doc
    txns = [c["txn"] for _, c, _ in b.cmds if c["args"] == {"pct": 7.0}]
    assert len(txns) == 2 and txns[0] == txns[1]    # the same txn: the controller's journal answers the retry


def test_openapi_and_docs_are_served(rig):
    s, doc, _ = call(rig["api"].url + "/openapi.json")
    assert s == 200 and "/api/v1/stations/{sid}/soc-target" in doc["paths"]
    assert AUDIENCE


# ---------------------------------------------------------------- history feed

def _samples(n, t0_ms=0, cp="C"):
    return [{"t_ms": t0_ms + 1000 * i, "cp": cp, "mode": "charging", "soc_pm": 500, "w": 3000, "ma": 13000,
             "mv": 230000, "mhz": 50000, "e_in_wh": 10 + i, "e_out_wh": 0, "dis_cap_wh": 5000, "errors": []}
            for i in range(n)]


def _count(rig, tok, st, t_from, t_to):
    q = "/stations/{}/telemetry?points=1&from={}&to={}".format(
        st, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t_from / 1000)),
        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t_to / 1000)))
    return sum(p["samples"] for p in call(url(rig, q), token=tok)[1]["points"])


def test_nothing_published_while_the_api_restarts_is_lost(rig):
    b, tok = rig["bridge"], rig["tok"]["driver-2"]
    api = rig["api"]
    api.stop()                              # a clean stop: the broker keeps its session (QoS 1)
    base = (int(time.time()) - 3000) * 1000
    b.event("CS-A2", base - 2000, "V2G-507", True, "waiting to enter service")
    # more messages than the broker's default queue (1,000) holds for a client that is away
    for i in range(1500):
        b.c.publish("v2g/CS-A2/telemetry", json.dumps({"station": "CS-A2", "ts": base + 1000 * i,
                                                       "samples": _samples(1, t0_ms=1000 * i)}), qos=1)
    b.telemetry("CS-A2", _samples(1, t0_ms=1_500_000), ts=base + 1_500_000)      # waits for all before it
    rig["api"] = ApiProc(rig["tmp"], api.args[api.args.index("--mqtt") + 1], rig["oidc"].issuer, rig["cfg"],
                         "--command-timeout", "3", store=api.store)
    wait_until(lambda: _count(rig, tok, "CS-A2", base, base + 1_600_000) == 1501, 20,
               "the samples sent while it was down")
    ev = call(url(rig, f"/stations/CS-A2/events?to={time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(base / 1000))}"),
              token=tok)[1]["events"]
    assert [(e["code"], e["on"], e["meaning"]) for e in ev] == [
        ("V2G-507", True, "waiting for the grid to be stable before starting")]


def test_two_api_workers_split_the_history_feed_and_store_each_sample_once(rig):
    b, tok = rig["bridge"], rig["tok"]["driver-2"]
    api = rig["api"]
    cfg2 = rig["tmp"] / "etc2"                 # the second worker's own account
    cfg2.mkdir(mode=0o750, exist_ok=True)
    for f in ("app_jwt.secret", "mqtt_ca.pem"):
        (cfg2 / f).write_bytes((rig["cfg"] / f).read_bytes())
    (cfg2 / "mqtt_password").write_text(USERS["v2g-api-2"])
    for f in ("app_jwt.secret", "mqtt_password"):
        (cfg2 / f).chmod(0o600)
    second = ApiProc(rig["tmp"], f"mqtts://v2g-api-2@127.0.0.1:{rig['broker'].port}", rig["oidc"].issuer,
                     cfg2, store=api.store)
    try:
        before = [call(a.url + "/healthz")[1]["counters"]["samples"] for a in (api, second)]
        base = (int(time.time()) - 600) * 1000
        for i in range(40):
            b.telemetry("CS-A2", _samples(2, t0_ms=2000 * i), ts=base + 2000 * i + 1000)
        wait_until(lambda: _count(rig, tok, "CS-A2", base, base + 100_000) == 80, 15, "80 samples stored")
        after = [call(a.url + "/healthz")[1]["counters"]["samples"] for a in (api, second)]
        got = [a - b_ for a, b_ in zip(after, before)]
        assert sum(got) == 80 and min(got) > 0, got            # each batch to one worker, both got some
        # either worker answers for the other's share
        assert call(second.url + "/api/v1/stations/CS-A2/telemetry?points=1&from={}&to={}".format(
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(base / 1000)),
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(base / 1000 + 100))), token=tok)[1]["points"][0][
            "samples"] == 80
    finally:
        second.stop()


def test_small_packets_leave_at_once_on_every_connection(rig, tmp_path):
    """Nagle's algorithm on a quiet link holds a command, or its result, for the delayed ACK of
    the packet before it (40 ms): a sequential command took 88 ms at p50 before, 3 ms after."""
    import asyncio
    import socket

    from host_tools.api.broker import BrokerLink
    from host_tools.api.store import SqliteStore
    from host_tools.bridge.mqtt_app import MqttApp
    assert "set_tcp_nodelay true" in rig["broker"].conf_text.splitlines()
    ca = str(rig["tmp"] / "v2g-test-ca.pem")
    loop = asyncio.new_event_loop()
    link = BrokerLink(f"mqtts://v2g-api-2@127.0.0.1:{rig['broker'].port}", SqliteStore(tmp_path / "s.db"),
                      ca_file=ca, password=USERS["v2g-api-2"])
    link.start(loop)
    try:
        assert link.connected.wait(10)
        assert link.client.socket().getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        link.stop()

    async def bridge_side():
        # the bridge's MQTT client, on an account of its own (one connection per account)
        app = MqttApp(f"mqtts://v2g-api-2@127.0.0.1:{rig['broker'].port}", ca_file=ca,
                      password=USERS["v2g-api-2"], client_id="v2g-api-2")
        await app.start()
        try:
            await asyncio.wait_for(app.connected.wait(), 10)
            return app.client.socket().getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        finally:
            app.stop()
    try:
        assert loop.run_until_complete(bridge_side()) == 1
    finally:
        loop.close()
