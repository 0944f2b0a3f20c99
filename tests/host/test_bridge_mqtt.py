"""The app channel's broker side: the shipped ACL (each app user reaches its own station,
the bridge all of v2g/) and the MQTT Will, for a single station and for a site gateway,
against a real Mosquitto with deploy/mosquitto/v2g.conf. The bridges here have no
controller and no CSMS to reach: the broker side does not need them."""

import json
import re
import ssl
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from bridge_helpers import Broker, BridgeProc, free_port, make_ca, wait_until
from paho.mqtt.enums import CallbackAPIVersion

from host_tools.bridge.service import will_status

USERS = {"v2g-bridge": "bridge-pw", "app-1": "pw-1", "app-2": "pw-2"}
APPS = {"app-1": "CS-M1", "app-2": "CS-M2"}


class Client:
    def __init__(self, port, ca, user, sub=None):
        self.got = []
        self._lock = threading.Lock()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{user}-{time.monotonic_ns()}",
                        protocol=mqtt.MQTTv5)
        c.username_pw_set(user, USERS[user])
        c.tls_set_context(ssl.create_default_context(cafile=str(ca)))
        c.on_message = self._on
        up = threading.Event()
        c.on_connect = lambda cl, ud, fl, rc, pr: up.set() if not rc.is_failure else None
        c.connect("127.0.0.1", port)
        c.loop_start()
        assert up.wait(10), f"{user} could not log in"
        if sub:
            done = threading.Event()
            c.on_subscribe = lambda *a: done.set()
            c.subscribe(sub, qos=1)
            assert done.wait(10)
        self.c = c

    def _on(self, cl, ud, m):
        try:
            p = json.loads(m.payload)
        except ValueError:
            p = m.payload.decode(errors="replace")
        with self._lock:
            self.got.append((m.topic, p, m.retain))

    def msgs(self, topic=None):
        with self._lock:
            return [(t, p, r) for t, p, r in self.got if topic is None or t == topic]

    def pub(self, topic, payload, retain=False):
        self.c.publish(topic, json.dumps(payload), qos=1, retain=retain).wait_for_publish(5)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mqtt")
    ca_key, ca_cert, ca_path = make_ca(tmp)
    broker = Broker(tmp / "broker", ca_key, ca_cert, ca_path, USERS, apps=APPS)
    cfg = tmp / "etc"
    cfg.mkdir(mode=0o750)
    (cfg / "mqtt_ca.pem").write_bytes(ca_path.read_bytes())
    (cfg / "mqtt_password").write_text(USERS["v2g-bridge"])
    (cfg / "mqtt_password").chmod(0o600)
    yield {"broker": broker, "ca": ca_path, "cfg": cfg, "tmp": tmp}
    broker.stop()


def test_acl_keeps_each_app_user_to_its_own_station(env):
    port, ca = env["broker"].port, env["ca"]
    assert "acl_file " in env["broker"].conf_text                    # the shipped config, with its ACL
    bridge = Client(port, ca, "v2g-bridge", sub="v2g/#")
    app1 = Client(port, ca, "app-1", sub="v2g/#")                     # asks for everything
    app2 = Client(port, ca, "app-2", sub="v2g/#")
    try:
        bridge.pub("v2g/CS-M1/status", {"station": "CS-M1"})
        bridge.pub("v2g/CS-M2/status", {"station": "CS-M2"})
        bridge.pub("v2g/CS-M1/cmd/result", {"txn": "a"})
        bridge.pub("v2g/_gateway/gw/status", {"gateway": "gw"})
        app1.pub("v2g/CS-M1/cmd", {"txn": "mine", "token": "secret-1"})
        app1.pub("v2g/CS-M2/cmd", {"txn": "not-mine"})                # another station: refused
        app1.pub("v2g/CS-M1/status", {"online": False})              # a forged status: refused
        wait_until(lambda: len(app2.msgs()) >= 2 and len(bridge.msgs("v2g/CS-M1/cmd")) >= 1, 10, "deliveries")
        time.sleep(0.5)
        assert {t for t, _, _ in app1.msgs()} == {"v2g/CS-M1/status", "v2g/CS-M1/cmd/result",
                                                   "v2g/_gateway/gw/status"}
        assert [p for _, p, _ in app1.msgs("v2g/CS-M1/status")] == [{"station": "CS-M1"}]
        assert {t for t, _, _ in app2.msgs()} == {"v2g/CS-M2/status", "v2g/_gateway/gw/status"}
        cmds = [(t, p["txn"]) for t, p, _ in bridge.msgs() if t.endswith("/cmd")]
        assert cmds == [("v2g/CS-M1/cmd", "mine")]                    # app-2 never saw app-1's token
        forged = [p for t, p, _ in bridge.msgs("v2g/CS-M1/status") if p.get("online") is False]
        assert forged == []
    finally:
        for c in (bridge, app1, app2):
            c.close()


def _site(env, tmp, stations, gw):
    dead = free_port()           # no controller and no CSMS answer there
    site = tmp / "site.json"
    site.write_text(json.dumps([{"station_id": s, "link": f"socket://127.0.0.1:{dead}"} for s in stations]))
    return BridgeProc(None, f"ws://127.0.0.1:{dead}/ocpp", stations[0], env["cfg"],
                      tmp / "log", tmp / "state", "--site", str(site), "--gateway-id", gw,
                      "--mqtt", f"mqtts://v2g-bridge@127.0.0.1:{env['broker'].port}",
                      "--retry-backoff", "5,0,0")


def test_a_site_gateway_that_dies_is_reported_offline_by_its_will(env, tmp_path):
    port, ca = env["broker"].port, env["ca"]
    gw_topic = "v2g/_gateway/gw-site/status"
    app = Client(port, ca, "app-1", sub="v2g/#")
    bridge = _site(env, tmp_path, ["CS-M1", "CS-M2"], "gw-site")
    try:
        up = wait_until(lambda: [p for _, p, _ in app.msgs(gw_topic) if p["online"]], 20, "gateway online")[0]
        assert up == {"gateway": "gw-site", "online": True, "reason": None, "stations": ["CS-M1", "CS-M2"]}
        st = wait_until(lambda: app.msgs("v2g/CS-M1/status"), 20, "station status")[-1][1]
        assert st["gateway"] == "gw-site"                              # which gateway's Will covers it
        bridge.kill()                                                  # no clean stop: only the Will
        down = wait_until(lambda: [p for _, p, _ in app.msgs(gw_topic) if not p["online"]], 10, "the Will")[0]
        assert down == {"gateway": "gw-site", "online": False, "reason": "bridge offline",
                        "stations": ["CS-M1", "CS-M2"]}
        late = Client(port, ca, "app-2", sub=gw_topic)                 # retained for later subscribers
        try:
            got = wait_until(lambda: late.msgs(gw_topic), 10, "retained gateway status")[0]
            assert got[2] and got[1]["online"] is False
        finally:
            late.close()
        # a clean stop: every station offline, the gateway too
        bridge = _site(env, tmp_path, ["CS-M1", "CS-M2"], "gw-site")
        wait_until(lambda: [p for _, p, _ in app.msgs(gw_topic)[1:] if p["online"]], 20, "gateway online again")
        n = len(app.msgs())
        bridge.stop()
        assert bridge.proc.returncode == 0
        wait_until(lambda: [p for t, p, _ in app.msgs()[n:] if t == gw_topic and not p["online"]], 10, "offline")
        last = [p for t, p, _ in app.msgs()[n:] if t == "v2g/CS-M1/status"][-1]
        assert last["online"] is False and last["v2g"] == {"available": False, "reason": "bridge offline"}
    finally:
        bridge.kill()
        app.close()


def test_a_single_station_bridge_that_dies_leaves_a_full_offline_status(env, tmp_path):
    port, ca = env["broker"].port, env["ca"]
    topic = "v2g/CS-M2/status"
    app = Client(port, ca, "app-2", sub=topic)
    dead = free_port()
    bridge = BridgeProc(f"socket://127.0.0.1:{dead}", f"ws://127.0.0.1:{dead}/ocpp", "CS-M2", env["cfg"],
                        tmp_path / "log", tmp_path / "state", "--gateway-id", "gw-one",
                        "--mqtt", f"mqtts://v2g-bridge@127.0.0.1:{port}", "--retry-backoff", "5,0,0")
    try:
        live = wait_until(lambda: [p for _, p, r in app.msgs(topic) if not r], 20, "live status")[-1]
        assert live["gateway"] is None                                 # its own Will covers it
        n = len(app.msgs())
        bridge.kill()
        will = wait_until(lambda: [p for _, p, _ in app.msgs(topic)[n:]
                                   if p["v2g"]["reason"] == "bridge offline"], 10, "the Will")[0]
        assert will == will_status("CS-M2")
        assert set(will) == set(live) and will["online"] is False and will["v2g"]["available"] is False
    finally:
        bridge.kill()
        app.close()


def _attach(port, ca, user, client_id):
    """An MQTT connection as `user` asking for `client_id`; (client, connected event)."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    c.username_pw_set(user, USERS[user])
    c.tls_set_context(ssl.create_default_context(cafile=str(ca)))
    up = threading.Event()
    c.on_connect = lambda cl, ud, fl, rc, pr: up.set() if not rc.is_failure else None
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c, up


def test_an_app_account_cannot_take_over_the_bridge_connection(env, tmp_path):
    port, ca = env["broker"].port, env["ca"]
    topic = "v2g/CS-M2/status"
    owner = Client(port, ca, "app-2", sub="v2g/CS-M2/#")
    dead = free_port()
    bridge = BridgeProc(f"socket://127.0.0.1:{dead}", f"ws://127.0.0.1:{dead}/ocpp", "CS-M2", env["cfg"],
                        tmp_path / "log", tmp_path / "state", "--gateway-id", "gw-take",
                        "--mqtt", f"mqtts://v2g-bridge@127.0.0.1:{port}", "--retry-backoff", "5,0,0")
    try:
        wait_until(lambda: [p for _, p, r in owner.msgs(topic) if not r], 20, "live status")
        n = len(owner.msgs(topic))     # a retained Will of an earlier bridge may come first
        asked = wait_until(lambda: re.findall(r"client id asked for: (\S+)", bridge.log_text()), 10, "id")[0]
        assert asked.startswith("v2g-bridge-gw-take-") and len(asked) >= len("v2g-bridge-gw-take-") + 16
        # app-1 asks for the ids a bridge would have: its account name (the id the shipped
        # broker gives it), the id the bridge asked for (as if it had leaked), and the gateway
        # id and pid it used to be made of
        for cid in ("v2g-bridge", asked, f"v2g-bridge-gw-take-{bridge.proc.pid}"):
            c, up = _attach(port, ca, "app-1", cid)
            try:
                assert up.wait(10), f"app-1 could not log in with client id {cid}"
            finally:
                c.disconnect()
                c.loop_stop()
        # the bridge answers on its connection: the result comes after anything a takeover
        # would have caused (the broker sends the Will before the new connection's CONNACK)
        owner.pub("v2g/CS-M2/cmd", {"txn": "after-takeover", "op": "charge_only", "args": {"on": True}})
        res = wait_until(lambda: [p for _, p, _ in owner.msgs("v2g/CS-M2/cmd/result")
                                  if p.get("txn") == "after-takeover"], 10, "the bridge's answer")[0]
        assert res["code"] == "V2G-401"                # no token key here: the bridge itself answered
        flaps = [p for _, p, _ in owner.msgs(topic)[n:] if p["v2g"]["reason"] == "bridge offline"]
        assert flaps == [], "the bridge's connection was taken over: its Will fired"
        log = (env["tmp"] / "broker" / "mosquitto.log").read_text()
        assert [x for x in log.splitlines() if "Client v2g-bridge" in x and "already connected" in x] == []
    finally:
        bridge.kill()
        owner.close()
