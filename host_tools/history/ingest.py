"""`v2g history ingest`: one of N workers that move the stations' telemetry and events from
MQTT into the sharded history store.

    $share/<group>/v2g/+/telemetry, $share/<group>/v2g/+/events   QoS 1, MQTT 5 shared
        subscriptions: the broker hands each message to one worker of the group

A worker keeps one persistent session (clean start off, stable client id, session expiry),
acknowledges a message (PUBACK, manual) only after the rows it carries are committed on their
shard, and writes with ON CONFLICT DO NOTHING on (station, t) and (station, t, code, on): a
worker killed mid-batch has its unacknowledged messages redelivered by the broker and the
rows already committed are not written twice.

Messages are batched per shard (COPY into a temporary table, one INSERT ... SELECT per bucket).
When a shard does not answer, its messages are held unacknowledged and retried; the other
shards go on. The broker never has more than `receive_max` messages in flight to this worker
(MQTT 5 Receive Maximum), which bounds what a worker holds; the rest waits in the worker's
session at the broker.

Bad messages (not JSON, not a batch, a station not registered in the fleet, a sample time in
the future or before the retention window) are counted, logged and acknowledged: never
stored, never retried, never stopping the worker.
"""

import json
import logging
import os
import queue
import socket
import ssl
import threading
import time
import urllib.parse

import psycopg

from host_tools.api.store import sample_rows
from host_tools.history import schema as S
from host_tools.history.mqtt5 import Subscriber
from host_tools.history.pg import _layout, connect, event_row, now_ms, settings_of

log = logging.getLogger("v2g.history.ingest")

COUNTERS = ("messages", "samples_in", "samples_new", "events_in", "events_new", "batches", "bad_json",
            "bad_shape", "unknown_station", "future", "too_old", "write_errors", "held_max")


BUCKETS_SQL = ("SELECT s.station, b FROM stations s, generate_series(0, %s - 1) b "
               "WHERE satisfies_hash_partition('samples'::regclass, %s, b, s.station)")
BUCKET_SQL = ("SELECT b FROM generate_series(0, %s - 1) b "
              "WHERE satisfies_hash_partition('samples'::regclass, %s, b, %s::text)")


class Item:
    __slots__ = ("mid", "gen", "kind", "station", "bucket", "rows", "ts")

    def __init__(self, mid, gen, kind, station, bucket, rows, ts):
        self.mid, self.gen, self.kind, self.station, self.bucket, self.rows, self.ts = \
            mid, gen, kind, station, bucket, rows, ts


class Lag:
    """Publish -> commit lag of each message (ms), kept for percentiles."""

    def __init__(self, keep=200_000):
        self.v = []
        self.keep = keep

    def add(self, ms):
        if len(self.v) < self.keep:
            self.v.append(ms)

    def pct(self, p):
        if not self.v:
            return None
        s = sorted(self.v)
        return s[min(len(s) - 1, int(len(s) * p / 100))]


class Worker:
    def __init__(self, store_url, mqtt_url, *, client_id=None, group="v2g-history", session_expiry_s=86400,
                 receive_max=2000, batch_rows=5000, batch_wait_s=0.2, stats_file=None):
        self.store_url = store_url
        u = urllib.parse.urlsplit(mqtt_url)
        if u.scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"--mqtt must be mqtt://host:port or mqtts://user:password@host:8883[?cafile=CA.pem], "
                             f"got {mqtt_url!r}")
        tls = None
        if u.scheme == "mqtts":           # the shipped broker (deploy/mosquitto/v2g.conf): TLS 1.3 only
            cafile = urllib.parse.parse_qs(u.query).get("cafile", [None])[0]
            tls = ssl.create_default_context(cafile=cafile)
            tls.minimum_version = ssl.TLSVersion.TLSv1_3
        self.host, self.port = u.hostname or "localhost", u.port or (8883 if tls else 1883)
        self.client_id = client_id or f"v2g-history-{socket.gethostname()}-{os.getpid()}"
        self.group = group
        self.batch_rows, self.batch_wait_s = batch_rows, batch_wait_s
        self.stats_file = stats_file
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.lag = Lag()
        self.q = queue.Queue()
        self.held = {}            # shard -> [Item] waiting for that shard to answer
        self.shard_conns = {}
        self.shard_down = {}      # shard -> wall ms it stopped answering
        self._tried = {}          # shard -> wall ms of the last write attempt
        self.stop_ev = threading.Event()
        self._window = (0, 0)     # (valid until wall ms, oldest sample time taken): moves at each UTC day
        self._load_fleet()
        self.subscribed = False
        self.client = Subscriber(
            self.host, self.port, self.client_id,
            [f"$share/{group}/v2g/+/{leaf}" for leaf in ("telemetry", "events")],
            on_message=self._on_message, on_subscribed=self._on_subscribed, session_expiry_s=session_expiry_s,
            receive_max=receive_max, keepalive=30,
            username=urllib.parse.unquote(u.username) if u.username else None,
            password=urllib.parse.unquote(u.password) if u.password else None, tls=tls)

    # -- fleet layout from the coordinator

    def _load_fleet(self):
        self.coord = connect(self.store_url)      # used from the MQTT connection's thread only
        cur = self.coord.cursor()
        self.settings = settings_of(cur)
        layout = _layout(cur)
        self.modulus = len(layout)
        self.bucket_shard = {b: s for s, _, b in layout}
        self.shard_dsn = {s: d for s, d, _ in layout}
        # every registered station's bucket at once, by the coordinator's own hash partitioning
        cur.execute(BUCKETS_SQL, (self.modulus, self.modulus))
        self.buckets = dict(cur.fetchall())
        self.stations = set(self.buckets)
        self.unknown = {}         # station -> monotonic time the coordinator said "not registered"

    def _coord(self):
        if self.coord.closed or self.coord.broken:
            self.coord = connect(self.store_url)
        return self.coord

    def bucket_of(self, station):
        b = self.buckets.get(station)
        if b is None:
            b = self._coord().execute(BUCKET_SQL, (self.modulus, self.modulus, station)).fetchone()[0]
            self.buckets[station] = b
        return b

    def known(self, station):
        """Registered in the fleet? Asked of the coordinator the first time; an unknown name is
        asked again at most every 5 s (a station registered meanwhile is taken at once after)."""
        if station in self.stations:
            return True
        asked = self.unknown.get(station)
        if asked is not None and time.monotonic() - asked < 5:
            return False
        try:
            found = self._coord().execute("SELECT 1 FROM stations WHERE station = %s", (station,)).fetchone()
        except psycopg.Error as e:
            log.warning("station %s not looked up: %s", station, e)
            found = None
        if found:
            self.stations.add(station)
            self.unknown.pop(station, None)
            return True
        if len(self.unknown) > 10000:       # a flood of made-up names must not grow memory
            self.unknown.clear()
        self.unknown[station] = time.monotonic()
        return False

    # -- MQTT side (the connection's thread, host_tools/history/mqtt5.py)

    def start(self):
        self.client.start()
        self.writer = threading.Thread(target=self._write_loop, name="history-writer", daemon=True)
        self.writer.start()

    def stop(self):
        self.stop_ev.set()
        self.writer.join(10)
        self.client.stop()
        self._dump_stats()

    def _on_subscribed(self, ok, codes):
        self.subscribed = ok

    def _on_message(self, mid, qos, topic, payload, gen):
        try:
            item = self._parse(mid, gen, topic, payload)
        except Exception:   # noqa: BLE001 - one bad message must not stop the network thread
            log.exception("message on %s not handled", topic)
            item = None
            self.counters["bad_shape"] += 1
        self.counters["messages"] += 1
        if item is None:
            if mid is not None:
                self.client.ack((mid,), gen)
        else:
            self.q.put(item)

    def _bad(self, what, topic, why):
        self.counters[what] += 1
        log.warning("dropped a message on %s: %s", topic, why)

    def _oldest_ok(self, now):
        until, oldest = self._window
        if now >= until:
            day = S.day_ms(S.day_of(now))
            oldest = day - self.settings["retention_days"] * S.DAY_MS
            self._window = (day + S.DAY_MS, oldest)
        return oldest

    def _parse(self, mid, gen, topic, payload):
        parts = topic.split("/")
        if len(parts) != 3 or parts[0] != "v2g" or parts[2] not in ("telemetry", "events"):
            return self._bad("bad_shape", topic, "not a station's telemetry or events topic")
        station, leaf = parts[1], parts[2]
        try:
            doc = json.loads(payload)
        except ValueError:
            return self._bad("bad_json", topic, "not JSON")
        if not isinstance(doc, dict) or not isinstance(doc.get("ts"), int):
            return self._bad("bad_shape", topic, "not an object with an integer `ts`")
        if not self.known(station):
            return self._bad("unknown_station", topic, f"station {station!r} is not registered in the fleet")
        now = now_ms()
        newest_ok = now + self.settings["max_future_s"] * 1000
        oldest_ok = self._oldest_ok(now)
        ts = doc["ts"]
        if leaf == "telemetry":
            samples = doc.get("samples")
            if not isinstance(samples, list) or not all(isinstance(s, dict) and isinstance(s.get("t_ms", 0), int)
                                                        for s in samples):
                return self._bad("bad_shape", topic, "`samples` is not a list of samples with integer `t_ms`")
            rows = sample_rows(station, ts, samples) if samples else []
            self.counters["samples_in"] += len(rows)
            if any(r[1] > newest_ok for r in rows):
                return self._bad("future", topic, f"a sample time is more than {self.settings['max_future_s']} s "
                                                      "ahead of this worker's clock")
            if any(r[1] < oldest_ok for r in rows):
                return self._bad("too_old", topic, "a sample time is before the retention window")
            if not rows:
                return None
            return Item(mid, gen, "s", station, self.bucket_of(station), rows, ts)
        if ts > newest_ok:
            return self._bad("future", topic, "the event time is in the future")
        if ts < oldest_ok:
            return self._bad("too_old", topic, "the event time is before the retention window")
        self.counters["events_in"] += 1
        return Item(mid, gen, "e", station, self.bucket_of(station), [event_row(station, ts, doc)], ts)

    # -- writer thread

    def _write_loop(self):
        last_stats = 0
        while not self.stop_ev.is_set():
            batch, n = [], 0
            end = time.monotonic() + self.batch_wait_s
            while n < self.batch_rows:
                try:
                    it = self.q.get(timeout=max(0.0, end - time.monotonic()))
                except queue.Empty:
                    break
                batch.append(it)
                n += len(it.rows)
            by_shard = {}
            for it in batch:
                by_shard.setdefault(self.bucket_shard[it.bucket], []).append(it)
            for shard, held in self.held.items():
                if held:
                    by_shard.setdefault(shard, [])[:0] = held
            self.held = {}
            for shard, items in by_shard.items():
                self._write_shard(shard, items)
            held_n = sum(len(v) for v in self.held.values())
            self.counters["held_max"] = max(self.counters["held_max"], held_n)
            if self.held and not batch:
                time.sleep(0.2)
            if time.monotonic() - last_stats > 1:
                last_stats = time.monotonic()
                self._dump_stats()

    def _write_shard(self, shard, items):
        if shard in self.shard_down and now_ms() - self._tried.get(shard, 0) < 1000:
            self.held[shard] = items          # retry that shard at most once a second
            return
        self._tried[shard] = now_ms()
        try:
            db = self.shard_conns.get(shard)
            if db is None or db.closed:
                db = connect(self.shard_dsn[shard])
                db.execute(f"CREATE TEMP TABLE in_samples (bucket integer, {S.SAMPLES_DDL}) ON COMMIT DELETE ROWS")
                db.execute(f"CREATE TEMP TABLE in_events (bucket integer, {S.EVENTS_DDL}) ON COMMIT DELETE ROWS")
                self.shard_conns[shard] = db
            new_s = new_e = 0
            with db.transaction(), db.cursor() as cur:
                sb, eb = set(), set()
                with cur.copy("COPY in_samples FROM STDIN") as cp:
                    for it in items:
                        if it.kind == "s":
                            sb.add(it.bucket)
                            for r in it.rows:
                                cp.write_row((it.bucket,) + r)
                if any(it.kind == "e" for it in items):
                    with cur.copy("COPY in_events FROM STDIN") as cp:
                        for it in items:
                            if it.kind == "e":
                                eb.add(it.bucket)
                                cp.write_row((it.bucket,) + it.rows[0])
                cols = ", ".join(S.SAMPLE_COLS)
                for b in sorted(sb):
                    # in time order per station: the session trigger sees the samples as they happened
                    cur.execute(f"INSERT INTO samples_b{b} SELECT {cols} FROM in_samples WHERE bucket = {b} "
                                "ORDER BY station, t ON CONFLICT DO NOTHING")
                    new_s += cur.rowcount
                for b in sorted(eb):
                    cur.execute(f'INSERT INTO events_b{b} SELECT station, t, code, "on", msg FROM in_events '
                                f"WHERE bucket = {b} ON CONFLICT DO NOTHING")
                    new_e += cur.rowcount
        except psycopg.Error as e:
            if shard not in self.shard_down or not isinstance(e, psycopg.OperationalError):
                log.error("shard %s not written (%s): holding %d messages", shard, str(e).splitlines()[0],
                          len(items))
                self.shard_down[shard] = now_ms()
            self.counters["write_errors"] += 1
            old = self.shard_conns.pop(shard, None)
            if old is not None:
                try:
                    old.close()
                except psycopg.Error:
                    pass
            self.held[shard] = items
            return
        if self.shard_down.pop(shard, None) is not None:
            log.warning("shard %s answers again: %d held messages written", shard, len(items))
        done = now_ms()
        by_gen = {}
        for it in items:
            if it.mid is not None:
                by_gen.setdefault(it.gen, []).append(it.mid)
            self.lag.add(done - it.ts)
        for gen, mids in by_gen.items():
            self.client.ack(mids, gen)
        self.counters["samples_new"] += new_s
        self.counters["events_new"] += new_e
        self.counters["batches"] += 1

    def snapshot(self):
        return {"worker": self.client_id, "at": now_ms(), "subscribed": self.subscribed, **self.counters,
                "held": sum(len(v) for v in self.held.values()), "queued": self.q.qsize(),
                "shards_down": sorted(self.shard_down), "lag_p50_ms": self.lag.pct(50),
                "lag_p99_ms": self.lag.pct(99), "lag_max_ms": self.lag.pct(100)}

    def _dump_stats(self):
        if not self.stats_file:
            return
        tmp = f"{self.stats_file}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.snapshot(), f)
        os.replace(tmp, self.stats_file)


def run(store_url, mqtt_url, **kw):
    import signal
    w = Worker(store_url, mqtt_url, **kw)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    w.start()
    try:
        while not stop.wait(10):
            s = w.snapshot()
            log.info("ingest: %d samples new, %d events new, held %d, lag p99 %s ms, bad %d", s["samples_new"],
                     s["events_new"], s["held"], s["lag_p99_ms"],
                     sum(s[k] for k in ("bad_json", "bad_shape", "unknown_station", "future", "too_old")))
    finally:
        w.stop()
    return w.snapshot()
