"""The API's MQTT 5 side: station status, the history feed, live telemetry and commands.

Subscriptions (QoS 1, a persistent session: clean start off, session expiry
`session_expiry_s`, so messages published while the API restarts wait at the broker):

    v2g/+/status, v2g/_gateway/+/status      every worker: retained status kept in memory
    v2g/+/cmd/result                         every worker: each waits for its own results
                                             (matched by MQTT 5 CorrelationData)
    $share/<group>/v2g/+/telemetry           the workers split the history feed: each
    $share/<group>/v2g/+/events              batch is stored by one of them
    v2g/<station>/telemetry, .../events      only while a live stream of that station is open
                                             on this worker (subscription id LIVE_SUB)

A message carries the MQTT 5 subscription identifiers that matched it, which tells a history
copy from a live copy when one worker has both.

paho runs its network loop in its own thread; the store is written from there (SQLite, its
own connection), and live listeners and command futures are handed to the asyncio loop.
"""

import asyncio
import json
import logging
import os
import socket
import ssl
import threading
import time
import urllib.parse

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

log = logging.getLogger(__name__)

HISTORY_SUB, LIVE_SUB, STATE_SUB = 1, 2, 3


class BrokerLink:
    def __init__(self, url, store, *, ca_file=None, password=None, client_id=None, group="v2g-api",
                 session_expiry_s=86400, cert_file=None, key_file=None):
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"--mqtt must be mqtt:// or mqtts://, got {url!r}")
        self.host = u.hostname or "localhost"
        self.tls = u.scheme == "mqtts"
        self.port = u.port or (8883 if self.tls else 1883)
        self.user = urllib.parse.unquote(u.username) if u.username else None
        self.store = store
        self.group = group
        self.status = {}         # station -> (status doc, wall ms received)
        self.gateways = {}       # gateway id -> doc
        self.live = {}           # station -> set of asyncio.Queue
        self.pending = {}        # correlation bytes -> asyncio.Future
        self.loop = None
        self.connected = threading.Event()
        self.offline_since = None
        self.counters = {"samples": 0, "events": 0, "results": 0, "stored_new": 0}
        self._lock = threading.Lock()
        # the broker makes the user name the client id (use_username_as_clientid): one account
        # per worker; a stable id keeps the persistent session across restarts
        cid = client_id or (self.user or f"v2g-api-{os.getpid()}")
        self.client_id = cid
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
        if self.user:
            c.username_pw_set(self.user, urllib.parse.unquote(u.password) if u.password else password)
        if self.tls:
            ctx = ssl.create_default_context(cafile=ca_file)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            if cert_file and key_file:
                ctx.load_cert_chain(cert_file, key_file)
            c.tls_set_context(ctx)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.reconnect_delay_set(1, 30)
        self.session_expiry_s = session_expiry_s
        self.client = c

    # -- life cycle

    def start(self, loop):
        self.loop = loop
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.session_expiry_s
        self.client.connect_async(self.host, self.port, keepalive=30, clean_start=False, properties=props)
        self.client.loop_start()

    def stop(self):
        self.client.disconnect()
        self.client.loop_stop()

    def _sub(self, topic, sub_id, no_local=False):
        props = Properties(PacketTypes.SUBSCRIBE)
        props.SubscriptionIdentifier = sub_id
        self.client.subscribe(topic, options=SubscribeOptions(qos=1), properties=props)

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            log.error("MQTT broker %s:%s refused the connection: %s", self.host, self.port, reason_code)
            return
        no_delay(client)
        self._sub("v2g/+/status", STATE_SUB)
        self._sub("v2g/_gateway/+/status", STATE_SUB)
        self._sub("v2g/+/cmd/result", STATE_SUB)
        self._sub(f"$share/{self.group}/v2g/+/telemetry", HISTORY_SUB)
        self._sub(f"$share/{self.group}/v2g/+/events", HISTORY_SUB)
        with self._lock:
            live = list(self.live)
        for st in live:
            self._sub_live(st)
        self.offline_since = None
        self.connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.connected.clear()
        if self.offline_since is None:
            self.offline_since = int(time.time() * 1000)

    def _on_message(self, client, userdata, msg):
        parts = msg.topic.split("/")
        if len(parts) < 3 or parts[0] != "v2g":
            return
        ids = getattr(msg.properties, "SubscriptionIdentifier", None) or []
        try:
            doc = json.loads(msg.payload) if msg.payload else None
        except ValueError:
            log.warning("not JSON on %s: dropped", msg.topic)
            return
        try:
            self._dispatch(parts, doc, ids, msg)
        except Exception:   # noqa: BLE001 - one bad message must not stop the network thread
            log.exception("message on %s not handled", msg.topic)

    def _dispatch(self, parts, doc, ids, msg):
        station, leaf = parts[1], "/".join(parts[2:])
        now = int(time.time() * 1000)
        if station == "_gateway":
            if len(parts) == 4 and parts[3] == "status" and isinstance(doc, dict):
                self.gateways[parts[2]] = (doc, now)
            elif doc is None and len(parts) == 4:
                self.gateways.pop(parts[2], None)
            return
        if leaf == "status":
            if isinstance(doc, dict):
                self.status[station] = (doc, now)
            else:
                self.status.pop(station, None)      # retained status cleared: station retired
            self._to_live(station, {"type": "status", "status": doc})
        elif leaf == "cmd/result":
            corr = getattr(msg.properties, "CorrelationData", None)
            fut = self.pending.get(bytes(corr)) if corr else None
            if fut is not None:
                self.counters["results"] += 1
                self.loop.call_soon_threadsafe(_settle, fut, doc)
        elif leaf == "telemetry" and isinstance(doc, dict):
            samples = doc.get("samples") or []
            ts = doc.get("ts") if isinstance(doc.get("ts"), int) else now
            if HISTORY_SUB in ids or not ids:
                self.counters["samples"] += len(samples)
                self.counters["stored_new"] += self.store.add_samples(station, ts, samples)
            if LIVE_SUB in ids or (not ids and station in self.live):
                self._to_live(station, {"type": "telemetry", "ts": ts, "samples": samples})
        elif leaf == "events" and isinstance(doc, dict):
            ts = doc.get("ts") if isinstance(doc.get("ts"), int) else now
            if HISTORY_SUB in ids or not ids:
                self.counters["events"] += 1
                self.store.add_event(station, ts, doc)
            if LIVE_SUB in ids or (not ids and station in self.live):
                self._to_live(station, {"type": "event", "event": {"t": ts, "code": doc.get("code"),
                                                                   "on": doc.get("on"), "msg": doc.get("msg")}})

    def _to_live(self, station, item):
        with self._lock:
            qs = list(self.live.get(station, ()))
        for q in qs:
            self.loop.call_soon_threadsafe(_offer, q, item)

    # -- live streams (asyncio side)

    def watch(self, station):
        q = asyncio.Queue(maxsize=256)
        with self._lock:
            first = station not in self.live
            self.live.setdefault(station, set()).add(q)
        if first and self.connected.is_set():
            self._sub_live(station)
        return q

    def unwatch(self, station, q):
        with self._lock:
            qs = self.live.get(station)
            if qs is None:
                return
            qs.discard(q)
            last = not qs
            if last:
                del self.live[station]
        if last:
            self.client.unsubscribe([f"v2g/{station}/telemetry", f"v2g/{station}/events"])

    def _sub_live(self, station):
        self._sub(f"v2g/{station}/telemetry", LIVE_SUB)
        self._sub(f"v2g/{station}/events", LIVE_SUB)

    # -- commands (asyncio side)

    async def command(self, station, payload, correlation: bytes, timeout_s):
        """Publish one command and wait for its result; None on timeout."""
        fut = self.loop.create_future()
        self.pending[correlation] = fut
        try:
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = correlation
            props.ResponseTopic = f"v2g/{station}/cmd/result"
            info = self.client.publish(f"v2g/{station}/cmd", json.dumps(payload, separators=(",", ":")), qos=1,
                                       properties=props)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                return None
            try:
                return await asyncio.wait_for(fut, timeout_s)
            except asyncio.TimeoutError:
                return None
        finally:
            self.pending.pop(correlation, None)

    def gateway_down(self, status):
        """The gateway's own status when the station is on a site gateway that went away."""
        gw = status.get("gateway") if isinstance(status, dict) else None
        g = self.gateways.get(gw) if gw else None
        if g is not None and g[0].get("online") is False:
            return g
        return None


def no_delay(client):
    """Small packets out at once: with Nagle's algorithm a command waits for the ACK of the one
    before it, which the far end delays (40 ms on Linux) when the link is quiet."""
    sock = client.socket()
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def _settle(fut, doc):
    if not fut.done():
        fut.set_result(doc)


def _offer(q, item):
    if q.full():          # a slow reader misses old items rather than growing memory
        try:
            q.get_nowait()
        except asyncio.QueueEmpty:
            pass
    q.put_nowait(item)
