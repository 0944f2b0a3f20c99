"""The fleet history store under load, on loopback: PostgreSQL coordinator + shards
(postgres_fdw hash partitions), one Mosquitto, two `v2g history ingest` workers, and a load
generator process playing N stations that each publish one sample per second in batches of
BATCH_S samples (QoS 1, `ts` = the publishing wall time, as the bridge does).

- sustained ingest, 3 shards, 2 workers, 10,000 stations for SUSTAIN_S seconds: samples
  committed per second and the publish -> commit lag p99 (measured by the workers).
- query latency while that ingest runs: one station's day of telemetry (86,400 samples,
  loaded beforehand) downsampled to 500 points, p99; the fleet-wide hourly discharge over that
  day (every shard at once).
- scaling: the same backlog (queued at the broker, workers stopped) drained by 2 workers into 1
  shard and into 3 shards: the ratio, and the 100,000-station extrapolation it implies. On one
  2-core machine the shards share the cores with the workers, so the ratio shows where the
  bottleneck is here, not what a shard per machine gives.

Everything shares this machine's 2 cores (4 PostgreSQL instances, the broker, the workers and
the load generator), so the figures are a floor for a deployment with a machine per shard.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "host"))

N_STATIONS = int(os.environ.get("V2G_BENCH_FLEET_STATIONS", "10000"))
BATCH_S = 5
SUSTAIN_S = int(os.environ.get("V2G_BENCH_FLEET_SECONDS", "40"))
BACKLOG_MSGS = 20000
GOAL_LAG_P99_MS = 2000
GOAL_QUERY_P99_MS = 100
DAY_MS = 86_400_000


def _pct(v, p):
    s = sorted(v)
    return s[min(len(s) - 1, int(len(s) * p / 100))] if s else float("nan")


def load(url, n, seconds, batch_s, prefix):
    """The load generator (its own process): station i publishes its batch at i/n of each
    batch period, so the broker sees a steady stream."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    host, port = url.rsplit(":", 1)
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(5000)
    c.max_queued_messages_set(0)
    c.connect(host.split("//")[1], int(port))
    c.loop_start()
    start = time.time()
    sent = late = 0
    period = batch_s / n
    k = 0
    while True:
        due = start + k * period
        now = time.time()
        if due > start + seconds:
            break
        if due > now:
            time.sleep(due - now)
        elif now - due > 1:
            late += 1
        i = k % n
        rnd = k // n
        ts = int(time.time() * 1000)
        samples = [{"t_ms": (rnd * batch_s + j) * 1000, "cp": "C", "mode": "v2g", "soc_pm": 700, "w": -7000,
                    "ma": 30000, "mv": 230000, "mhz": 50000, "e_in_wh": 0, "e_out_wh": rnd * batch_s * 2 + j * 2,
                    "dis_cap_wh": 30000} for j in range(batch_s)]
        c.publish(f"v2g/{prefix}{i:06d}/telemetry", json.dumps({"ts": ts, "samples": samples},
                                                                separators=(",", ":")), qos=1)
        sent += 1
        k += 1
    c.loop_stop()
    c.disconnect()
    print(json.dumps({"sent": sent, "samples": sent * batch_s, "late": late, "took": time.time() - start}))


def _load_proc(url, n, seconds, prefix):
    return subprocess.Popen([sys.executable, "-m", "bench.history", "load", url, str(n), str(seconds), str(BATCH_S),
                             prefix], cwd=ROOT, stdout=subprocess.PIPE, text=True)


def _preload_day(fleet, store, stations, day_start):
    """A full day of 1 Hz telemetry for a few stations, copied straight into their shards
    (triggers off: this is history, not a live feed)."""
    from host_tools.history import pg
    db = store._db()
    n = db.execute("SELECT count(*) FROM buckets").fetchone()[0]
    for st in stations:
        b = db.execute("SELECT b FROM generate_series(0, %s - 1) b WHERE satisfies_hash_partition("
                       "'samples'::regclass, %s, b, %s::text)", (n, n, st)).fetchone()[0]
        dsn = db.execute("SELECT s.dsn FROM buckets b JOIN shards s ON s.id = b.shard WHERE b.bucket = %s",
                         (b,)).fetchone()[0]
        with pg.connect(dsn) as sh:
            sh.execute("SET session_replication_role = replica")
            sh.execute(f"INSERT INTO samples_b{b} (station, t, cp, soc_pm, w, e_in_wh, e_out_wh, doc) "
                       "SELECT %s, %s + i * 1000, 'C', 500 + i %% 400, -(i %% 7000), 0, i / 3, '{}' "
                       "FROM generate_series(0, 86399) i ON CONFLICT DO NOTHING", (st, day_start))
            sh.execute(f"ANALYZE samples_b{b}")


def _workers(root, fleet_dsn, broker_url, tag):
    from history_helpers import IngestProc
    return [IngestProc(root, fleet_dsn, broker_url, f"{tag}{i}") for i in range(2)]


def _committed(workers):
    return sum(w.stats().get("samples_new", 0) for w in workers)


def _backlog_rate(root, shards):
    """2 workers draining BACKLOG_MSGS messages queued at the broker into `shards` shards."""
    from history_helpers import LocalFleet, PlainBroker, Publisher
    from host_tools.history import pg
    fleet = LocalFleet(root / f"scale{shards}", shards=shards, buckets=6)
    broker = PlainBroker(root / f"scale{shards}", "broker").start()
    try:
        store = pg.PgStore(fleet.dsn)
        stations = [f"BL{i:05d}" for i in range(2000)]
        store.register([(s, "zone-a") for s in stations])
        ws = _workers(root / f"scale{shards}", fleet.dsn, broker.url, f"s{shards}w")
        for w in ws:
            w.wait_subscribed()                    # sessions exist at the broker
        for w in ws:
            w.stop()
        pub = Publisher(broker.url)
        t0 = pg.now_ms() - 600_000
        infos = [pub.batch(stations[k % len(stations)], t0 + (k // len(stations)) * 5000,
                           (k // len(stations)) * 5000) for k in range(BACKLOG_MSGS)]
        for i in infos:
            i.wait_for_publish(60)
        pub.close()
        want = BACKLOG_MSGS * 5
        for w in ws:
            w.start()
        # timed from the first commit: the workers' start-up (interpreter, connections) is not ingest
        assert pg.wait_for(lambda: _committed(ws) > 0, 60, 0.05)
        start, first = time.monotonic(), _committed(ws)
        assert pg.wait_for(lambda: _committed(ws) >= want, 300, 0.1)
        took = time.monotonic() - start
        want -= first
        for w in ws:
            w.stop()
        store.close()
        return want / took
    finally:
        broker.stop()
        fleet.close()


def measure():
    from history_helpers import LocalFleet, PlainBroker
    from host_tools.history import pg
    root = Path(tempfile.mkdtemp(prefix="v2g-bench-fleet-"))
    os.chmod(root, 0o755)
    r = {}
    fleet = LocalFleet(root / "main", shards=3, buckets=6, retention_days=3)
    broker = PlainBroker(root / "main", "broker").start()
    try:
        store = pg.PgStore(fleet.dsn)
        stations = [f"FL{i:06d}" for i in range(N_STATIONS)]
        store.register([(s, "zone-a" if i % 2 else "zone-b") for i, s in enumerate(stations)])
        day = pg.S.day_ms(pg.S.day_of(pg.now_ms())) - DAY_MS          # yesterday, whole
        q_stations = [f"Q{i}" for i in range(5)]
        store.register([(s, "zone-a") for s in q_stations])
        _preload_day(fleet, store, q_stations, day)
        ws = _workers(root / "main", fleet.dsn, broker.url, "w")
        for w in ws:
            w.wait_subscribed()
        gen = _load_proc(broker.url, N_STATIONS, SUSTAIN_S, "FL")
        # queries while the ingest runs
        lat, q_store = [], pg.PgStore(fleet.dsn)
        stop = threading.Event()

        def query_loop():
            k = 0
            while not stop.is_set():
                t = time.perf_counter()
                pts = q_store.telemetry(q_stations[k % 5], day, day + DAY_MS, 500)
                lat.append((time.perf_counter() - t) * 1000)
                assert len(pts) == 500
                k += 1
                stop.wait(1.0)             # an operator's dashboard, not a load of its own
        qt = threading.Thread(target=query_loop, daemon=True)
        t_start = time.monotonic()
        c0 = _committed(ws)
        qt.start()
        time.sleep(10)                     # warm-up: stations ramp in over the first batch period
        c1, t1 = _committed(ws), time.monotonic()
        gen_out = json.loads(gen.communicate(timeout=SUSTAIN_S + 120)[0].strip().splitlines()[-1])
        c2, t2 = _committed(ws), time.monotonic()
        stop.set()
        qt.join(10)
        # what was published is all committed?
        pg.wait_for(lambda: _committed(ws) >= gen_out["samples"], 120, 0.2)
        t3 = time.monotonic()
        stats = [w.stats() for w in ws]
        for w in ws:
            w.stop()
        stats = [w.stats() for w in ws]
        t = time.perf_counter()
        agg = store.discharge_by_hour(day, day + DAY_MS)
        agg_ms = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        agg_now = store.discharge_by_hour(pg.now_ms() - 3_600_000, pg.now_ms() + 60_000)
        agg_now_ms = (time.perf_counter() - t) * 1000
        r["sustain"] = {"rate": (c2 - c1) / (t2 - t1), "published": gen_out, "committed": _committed(ws) - c0,
                        "lag_p99": max(s.get("lag_p99_ms") or 0 for s in stats),
                        "lag_p50": max(s.get("lag_p50_ms") or 0 for s in stats),
                        "drain_s": t3 - t_start - SUSTAIN_S, "query": lat, "agg_ms": agg_ms, "agg_hours": len(agg),
                        "agg_now_ms": agg_now_ms, "agg_now_stations": sum(a["stations"] for a in agg_now)}
        q_store.close()
        store.close()
    finally:
        broker.stop()
        fleet.close()
    r["scale"] = {n: _backlog_rate(root, n) for n in (1, 3)}
    shutil.rmtree(root, ignore_errors=True)
    return r


def rows():
    r = measure()
    s = r["sustain"]
    need = N_STATIONS                        # samples/s at one per station per second
    pub = s["published"]
    out = [
        (f"sustained ingest, 3 shards, 2 workers, {N_STATIONS:,} stations x 1 sample/s ({BATCH_S}-sample batches), "
         "samples committed per s", round(s["rate"]), "samples/s", f">= {need:,}", s["rate"] >= need * 0.98),
        ("  published by the load generator (samples, of which sent > 1 s late)",
         f"{pub['samples']:,} ({pub['late']:,} late)", "", "informational", None),
        ("  all published samples committed", f"{s['committed']:,}/{pub['samples']:,}", "", "all",
         s["committed"] >= pub["samples"]),
        ("  publish -> committed row lag p50", s["lag_p50"], "ms", "informational", None),
        ("  publish -> committed row lag p99", s["lag_p99"], "ms", f"< {GOAL_LAG_P99_MS} ms",
         s["lag_p99"] < GOAL_LAG_P99_MS),
        ("one station's day (86,400 samples) downsampled to 500 points, p99 while ingest runs",
         round(_pct(s["query"], 99), 1), "ms", f"< {GOAL_QUERY_P99_MS} ms",
         _pct(s["query"], 99) < GOAL_QUERY_P99_MS),
        ("  same, p50 (queries)", f"{round(_pct(s['query'], 50), 1)} ({len(s['query'])})", "ms", "informational",
         None),
        ("fleet-wide hourly discharge over a day (5 stations x 86,400 samples, 3 shards at once)",
         round(s["agg_ms"]), "ms", "informational", None),
        (f"fleet-wide hourly discharge over the last hour ({s['agg_now_stations']:,} station-hours)",
         round(s["agg_now_ms"]), "ms", "informational", None),
    ]
    r1, r3 = r["scale"][1], r["scale"][3]
    ratio = r3 / r1
    out += [
        ("backlog drain, 2 workers -> 1 shard", round(r1), "samples/s", "informational", None),
        ("backlog drain, 2 workers -> 3 shards", round(r3), "samples/s", "informational", None),
        ("  ratio 3 shards / 1 shard (all on one 2-core machine)", round(ratio, 2), "x", "informational", None),
        ("  extrapolation: ingest workers for 100,000 stations at 1 sample/s, at the measured rate per "
         "worker (3 shards / 2), a core each", int(-(-100_000 // max(1, r3 / 2))), "workers",
         "extrapolated, not measured", None),
        ("  extrapolation: shards for 100,000 stations, if a shard takes what 3 took here (r3), a machine each",
         int(-(-100_000 // max(1, r3))), "shards", "extrapolated, not measured", None),
    ]
    return out


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "load":
        load(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
    else:
        os.environ.setdefault("PYTHONUNBUFFERED", "1")
        for row in rows():
            print(row)
