"""The ingest worker's MQTT 5 connection: one persistent session, shared subscriptions at QoS 1,
acknowledgements sent by the worker when it has committed (many PUBACKs in one write).

Only what a worker needs from MQTT 5 (CONNECT with Session Expiry and Receive Maximum,
SUBSCRIBE, PUBLISH in, PUBACK out, PINGREQ, DISCONNECT). It reads the socket in large chunks
and takes every complete packet out of the buffer at once: paho-mqtt's general client reads each
packet with several small reads, wakes its loop per packet, decodes every MQTT 5 property into
objects and sends each PUBACK by itself, which made up half of a worker's time at 2,000
messages a second (docs/fleet.md, Figures).

A lost connection is made again (1 s, doubling to 10 s); the broker keeps the session and
sends again every message not acknowledged. Each connection has a generation number: an
acknowledgement for a message received on an earlier connection is not sent (its packet id may
mean another message now); the broker's new copy of it is stored (a no-op: the keys) and
acknowledged instead.
"""

import logging
import select
import socket
import ssl
import struct
import threading
import time

log = logging.getLogger("v2g.history.mqtt")

CONNACK, PUBLISH, PUBACK, SUBACK, PINGRESP, DISCONNECT = 0x20, 0x30, 0x40, 0x90, 0xD0, 0xE0
PINGREQ = b"\xc0\x00"


def _varint(n):
    out = bytearray()
    while True:
        n, b = n >> 7, n & 0x7F
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def _read_varint(buf, i):
    """(value, index after it), or (None, i) if the buffer ends inside it."""
    n = shift = 0
    while i < len(buf):
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n, i
        shift += 7
        if shift > 21:
            raise ValueError("malformed remaining length")
    return None, i


def _str(s):
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def connect_packet(client_id, keepalive, session_expiry_s, receive_max, username=None, password=None):
    flags = 0                                     # clean start off: the session is kept
    if username is not None:
        flags |= 0x80
    if password is not None:
        flags |= 0x40
    props = b"\x11" + struct.pack("!I", session_expiry_s) + b"\x21" + struct.pack("!H", receive_max)
    var = b"\x00\x04MQTT\x05" + bytes([flags]) + struct.pack("!H", keepalive) + _varint(len(props)) + props
    payload = _str(client_id)
    if username is not None:
        payload += _str(username)
    if password is not None:
        pw = password.encode()
        payload += struct.pack("!H", len(pw)) + pw
    body = var + payload
    return b"\x10" + _varint(len(body)) + body


def subscribe_packet(pid, filters, qos=1):
    body = struct.pack("!H", pid) + b"\x00" + b"".join(_str(f) + bytes([qos]) for f in filters)
    return b"\x82" + _varint(len(body)) + body


class Subscriber:
    """on_message(mid, qos, topic, payload, gen) runs on this connection's thread for each
    PUBLISH (mid None at QoS 0); on_subscribed(ok, reason_codes) after each SUBACK."""

    def __init__(self, host, port, client_id, filters, *, on_message, on_subscribed=None, session_expiry_s=86400,
                 receive_max=2000, keepalive=30, username=None, password=None, tls=None):
        """tls: an ssl.SSLContext to speak MQTT over TLS (the shipped broker's 8883), or None."""
        self.host, self.port, self.client_id, self.filters = host, port, client_id, list(filters)
        self.on_message, self.on_subscribed = on_message, on_subscribed
        self.session_expiry_s, self.receive_max, self.keepalive = session_expiry_s, receive_max, keepalive
        self.username, self.password, self.tls = username, password, tls
        self.gen = 0                  # connection generation; 0: none yet
        self.sock = None
        # every read and write is on the connection's thread (a TLS socket is not to be read and
        # written from two threads at once): ack() queues its PUBACKs and wakes that thread
        self._out, self._out_lock = [], threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stop = threading.Event()
        self._last_send = 0.0
        self.thread = None

    def start(self):
        self.thread = threading.Thread(target=self._run, name=f"mqtt-{self.client_id}", daemon=True)
        self.thread.start()

    def stop(self):
        self._stop.set()
        self._wake()
        if self.thread is not None:
            self.thread.join(10)

    def ack(self, mids, gen):
        """PUBACK the messages received on connection `gen` (sent at once by the connection's
        thread, all in one write); nothing if that connection is gone: the broker sends them
        again on the next one."""
        if gen != self.gen or self.sock is None or not mids:
            return False
        data = b"".join(b"\x40\x02" + struct.pack("!H", m) for m in mids)
        with self._out_lock:
            self._out.append((gen, data))
        self._wake()
        return True

    def _wake(self):
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass                       # a wake-up is already pending

    def _send(self, data, s):
        s.sendall(data)
        self._last_send = time.monotonic()

    # -- the connection's thread

    def _run(self):
        delay = 1
        while not self._stop.is_set():
            try:
                self._session()
                delay = 1
            except Exception as e:   # noqa: BLE001 - a broken packet too: drop the connection, make it again
                if self._stop.is_set():
                    break
                log.warning("broker %s:%s: %s; connecting again in %d s", self.host, self.port,
                            e if isinstance(e, (OSError, ValueError)) else repr(e), delay)
            finally:
                s, self.sock = self.sock, None
                if s is not None:
                    s.close()
            if self._stop.wait(delay):
                break
            delay = min(10, delay * 2)

    def _session(self):
        s = socket.create_connection((self.host, self.port), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls is not None:
            s = self.tls.wrap_socket(s, server_hostname=self.host)
        self.sock = s
        self._send(connect_packet(self.client_id, self.keepalive, self.session_expiry_s, self.receive_max,
                                  self.username, self.password), s)
        buf = bytearray()
        last_in = time.monotonic()
        connected = False
        while True:
            pending = self.tls is not None and s.pending()
            ready = select.select([s, self._wake_r], [], [], 0 if pending else 1.0)[0]
            if self._wake_r in ready:
                try:
                    self._wake_r.recv(4096)
                except BlockingIOError:
                    pass
            with self._out_lock:
                out, self._out = self._out, []
            data = b"".join(d for gen, d in out if gen == self.gen)
            if data:
                self._send(data, s)
            if self._stop.is_set():
                self._send(b"\xe0\x00", s)       # DISCONNECT, normal: the session stays at the broker
                return
            if pending or s in ready:
                try:
                    chunk = s.recv(262144)
                except (socket.timeout, ssl.SSLWantReadError):
                    chunk = None
                if chunk is not None:
                    if not chunk:
                        raise ConnectionError("the broker closed the connection")
                    buf += chunk
                    last_in = time.monotonic()
            now = time.monotonic()
            if now - last_in > 1.5 * self.keepalive:
                raise ConnectionError(f"nothing from the broker for {now - last_in:.0f} s")
            if connected and now - self._last_send >= self.keepalive / 2:
                self._send(PINGREQ, s)
            i = 0
            while True:
                if len(buf) - i < 2:
                    break
                rl, j = _read_varint(buf, i + 1)
                if rl is None or len(buf) - j < rl:
                    break
                first, body = buf[i], buf[j:j + rl]       # a copy: buf is cut below
                i = j + rl
                kind = first & 0xF0
                if kind == PUBLISH:
                    qos = (first >> 1) & 3
                    tl = body[0] << 8 | body[1]
                    topic = bytes(body[2:2 + tl]).decode("utf-8", "replace")
                    k = 2 + tl
                    mid = None
                    if qos:
                        mid = body[k] << 8 | body[k + 1]
                        k += 2
                    pl, k = _read_varint(body, k)
                    self.on_message(mid, qos, topic, bytes(body[k + pl:]), self.gen)
                elif kind == CONNACK:
                    present, reason = body[0] & 1, body[1]
                    if reason >= 0x80:
                        raise ConnectionError(f"the broker refused the connection (reason 0x{reason:02x})")
                    self.gen += 1
                    connected = True
                    log.info("connected to %s:%s as %s (session present: %s)", self.host, self.port,
                             self.client_id, bool(present))
                    self._send(subscribe_packet(1, self.filters), s)
                elif kind == SUBACK:
                    pl, k = _read_varint(body, 2)
                    codes = list(body[k + pl:])
                    ok = all(c < 0x80 for c in codes)
                    if not ok:
                        log.error("the broker refused a subscription: %s", codes)
                    if self.on_subscribed:
                        self.on_subscribed(ok, codes)
                elif kind == DISCONNECT:
                    raise ConnectionError(f"the broker disconnected (reason 0x{body[0] if len(body) else 0:02x})")
                # PUBACK, PINGRESP and the rest: nothing to do
            if i:
                del buf[:i]
