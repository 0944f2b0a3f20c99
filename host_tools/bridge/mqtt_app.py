"""The app channel over MQTT 5 (paho-mqtt 2.x), one client for every station of a gateway.

Topics per station:
    v2g/<station>/telemetry    batches of telemetry samples (QoS 0)
    v2g/<station>/status       retained status: online, mode, V2G available/unavailable + reason
    v2g/<station>/events       controller and bridge events (QoS 1)
    v2g/<station>/cmd          commands from the app (QoS 1), JSON:
                               {"txn": "...", "token": "<JWT>", "op": "...", "args": {...}}
    v2g/<station>/cmd/result   {"txn", "ok", "code", "msg", "data"} (QoS 1); an MQTT 5
                               CorrelationData on the command is copied onto its result
    v2g/_gateway/<gw>/status   retained, several stations on one gateway only: {"gateway",
                               "online", "stations"}; the MQTT Will sets it offline when the
                               process dies (a connection has one Will, not one per station)

With one station the Will goes on that station's status topic instead.

paho runs its network loop in its own thread; messages are handed to the asyncio loop
with call_soon_threadsafe and every decision is taken there.
"""

import asyncio
import json
import logging
import socket
import ssl
import urllib.parse

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

log = logging.getLogger(__name__)


def topic(station, leaf):
    return f"v2g/{station}/{leaf}"


def gateway_topic(gateway_id):
    return f"v2g/_gateway/{gateway_id}/status"


class MqttApp:
    def __init__(self, url, *, ca_file=None, cert_file=None, key_file=None, password=None,
                 client_id="v2g-bridge", will=None, clog=None):
        """will: (topic, payload dict) the broker publishes, retained, when this client
        disappears without a clean disconnect."""
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"MQTT URL must be mqtt:// or mqtts://, got {url!r}")
        self.host = u.hostname or "localhost"
        self.tls = u.scheme == "mqtts"
        self.port = u.port or (8883 if self.tls else 1883)
        self.handlers = {}       # station -> async fn(payload dict or None, raw bytes, props)
        self.clog = clog         # central_system.log (CentralLog) or None
        self.loop = None
        self.connected = asyncio.Event()
        self.counters = {"published": 0, "commands": 0, "dropped": 0}
        self.on_connected = []   # fns called on the asyncio loop after each (re)connection
        self.client_id = client_id
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        if u.username:
            c.username_pw_set(urllib.parse.unquote(u.username),
                              urllib.parse.unquote(u.password) if u.password else password)
        if self.tls:
            ctx = ssl.create_default_context(cafile=ca_file)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            if cert_file and key_file:
                ctx.load_cert_chain(cert_file, key_file)
            c.tls_set_context(ctx)
        if will is not None:
            c.will_set(will[0], json.dumps(will[1], separators=(",", ":")), qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.reconnect_delay_set(1, 30)
        self.client = c

    def register(self, station, handler):
        self.handlers[station] = handler
        if self.connected.is_set():
            self.client.subscribe(topic(station, "cmd"), qos=1)

    async def start(self):
        self.loop = asyncio.get_running_loop()
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()

    def stop(self):
        self.client.disconnect()
        self.client.loop_stop()

    # -- paho thread

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            log.error("MQTT connect refused: %s", reason_code)
            if self.clog is not None:
                # an error line, not only a warning: a wrong user or password stops the app channel
                self.clog.event("-", "V2G-401", f"MQTT broker {self.host}:{self.port} refused the login: "
                                f"{reason_code}")
            return
        # a command result out at once: with Nagle's algorithm it waits for the delayed ACK
        # (40 ms) of the packet before it on a quiet link
        sock = client.socket()
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        if self.clog is not None:
            self.clog.event("-", "INFO", f"MQTT broker {self.host}:{self.port} connected, client id asked "
                            f"for: {self.client_id}")
        for st in self.handlers:
            client.subscribe(topic(st, "cmd"), qos=1)
        self.loop.call_soon_threadsafe(self.connected.set)
        for fn in self.on_connected:
            # a Will may have fired while we were away: the hooks publish the live state again
            self.loop.call_soon_threadsafe(fn)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.connected.clear)

    def _on_message(self, client, userdata, msg):
        parts = msg.topic.split("/")
        if len(parts) != 3 or parts[0] != "v2g" or parts[2] != "cmd":
            return
        handler = self.handlers.get(parts[1])
        if handler is None:
            return
        corr = getattr(msg.properties, "CorrelationData", None) if msg.properties else None
        self.counters["commands"] += 1
        fut = asyncio.run_coroutine_threadsafe(self._guarded(parts[1], handler, msg.payload, corr), self.loop)
        fut.add_done_callback(self._handler_done)

    async def _guarded(self, station, handler, payload, corr):
        """Run a station's command handler; whatever it raises, the app gets a V2G-400 result."""
        try:
            await handler(payload, corr)
        except asyncio.CancelledError:
            raise
        except Exception as e:   # noqa: BLE001 - never leave the app without a cmd/result
            log.exception("%s: command handler failed", station)
            if self.clog is not None:
                self.clog.event(station, "V2G-400", f"app command failed: {type(e).__name__}: {e}")
            self.publish(station, "cmd/result", {"txn": None, "ok": False, "code": "V2G-400",
                                                  "msg": f"command not processed: {type(e).__name__}",
                                                  "data": {}}, qos=1, correlation=corr)

    def _handler_done(self, fut):
        if fut.cancelled():
            return
        e = fut.exception()
        if e is not None:
            log.error("MQTT command handler ended with %r", e)

    # -- publishing (any thread)

    def publish(self, station, leaf, obj, qos=0, retain=False, correlation=None):
        return self.publish_to(topic(station, leaf), obj, qos, retain, correlation)

    def publish_to(self, full_topic, obj, qos=0, retain=False, correlation=None):
        props = None
        if correlation is not None:
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = correlation
        info = self.client.publish(full_topic, json.dumps(obj, separators=(",", ":")),
                                   qos=qos, retain=retain, properties=props)
        if info.rc == mqtt.MQTT_ERR_SUCCESS:
            self.counters["published"] += 1
        else:
            self.counters["dropped"] += 1
        return info
