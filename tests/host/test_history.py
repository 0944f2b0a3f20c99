"""The fleet history store: PostgreSQL coordinator + 3 shard instances (postgres_fdw hash
partitions), Mosquitto with MQTT 5 shared subscriptions, `v2g history ingest` workers as
processes. The instances start once for the module; each test uses its own station names."""

import csv
import io
import json
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from history_helpers import PG_BIN, IngestProc, LocalFleet, LocalPg, PlainBroker, Publisher, have_postgres, v2g

pytestmark = pytest.mark.skipif(not have_postgres(), reason="PostgreSQL 15 not installed (tools/system-deps.sh)")

pg = pytest.importorskip("host_tools.history.pg")
from host_tools.api.store import SqliteStore, sample_rows, telemetry_point  # noqa: E402
from host_tools.history.mqtt5 import Subscriber  # noqa: E402


@pytest.fixture(scope="module")
def root():
    """Our own directory: pytest prunes old /tmp/pytest-of-* runs at the start of every session,
    another run's start included, and the instances' data must outlive that."""
    d = Path(tempfile.mkdtemp(prefix="v2g-fleet-test-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def fleet(root):
    f = LocalFleet(root / "fleet", shards=3, buckets=6)
    yield f
    f.close()


@pytest.fixture(scope="module")
def zone_a(fleet, root):
    """Zone a: a broker and two ingest workers sharing the feed."""
    root = root / "zone_a"
    root.mkdir()
    broker = PlainBroker(root, "broker-a").start()
    workers = [IngestProc(root, fleet.dsn, broker.url, f"wa{i}") for i in range(2)]
    for w in workers:
        w.wait_subscribed()
    pub = Publisher(broker.url)
    yield broker, workers, pub, root
    pub.close()
    for w in workers:
        w.stop()
    broker.stop()


@pytest.fixture(scope="module")
def store(fleet):
    s = pg.PgStore(fleet.dsn)
    yield s
    s.close()


def bucket_shard(store, station):
    db = store._db()
    n = db.execute("SELECT count(*) FROM buckets").fetchone()[0]
    b = db.execute("SELECT b FROM generate_series(0, %s - 1) b WHERE satisfies_hash_partition("
                   "'samples'::regclass, %s, b, %s::text)", (n, n, station)).fetchone()[0]
    return b, db.execute("SELECT shard FROM buckets WHERE bucket = %s", (b,)).fetchone()[0]


def rows_on_shards(fleet, prefix, table="samples"):
    """{shard: (rows, distinct keys)} of stations named prefix*, read on each shard directly
    (a stopped shard is left out)."""
    out = {}
    for i, sh in enumerate(fleet.shards):
        if not sh.running():
            continue
        with pg.connect(sh.dsn) as db:
            tables = [r[0] for r in db.execute(
                "SELECT c.relname FROM pg_class c WHERE c.relname ~ %s AND c.relkind IN ('p', 'r')",
                (f"^{table}_b[0-9]+$",))]
            key = "start" if table == "sessions" else "t"
            n = d = 0
            for t in tables:
                a, b = db.execute(f"SELECT count(*), count(DISTINCT (station, {key})) FROM {t} WHERE station LIKE %s",
                                  (prefix + "%",)).fetchone()
                n, d = n + a, d + b
            out[i] = (n, d)
    return out


def total(fleet, prefix, table="samples"):
    r = rows_on_shards(fleet, prefix, table)
    return sum(v[0] for v in r.values()), sum(v[1] for v in r.values())


def register(store, prefix, n, region="zone-a"):
    names = [f"{prefix}{i:04d}" for i in range(n)]
    store.register([(s, region) for s in names])
    return names


def publish_burst(pub, stations, batches, ts0, per=5):
    infos = []
    for k in range(batches):
        for st in stations:
            infos.append(pub.batch(st, ts0 + k * per * 1000, k * per * 1000, n=per, e_out0=k * per * 2))
    for info in infos:
        info.wait_for_publish(30)
    return len(infos) * per


def wait_rows(fleet, prefix, want, timeout=60):
    ok = pg.wait_for(lambda: total(fleet, prefix)[0] >= want, timeout, 0.2)
    return ok, total(fleet, prefix)


# ---------------------------------------------------------------- the store interface


def batches_for_parity(now):
    """Plug in, discharge, unplug, plug in again; one batch delivered twice."""
    out, tick, e_out = [], 0, 0
    for k, cps in enumerate([["A", "A", "B", "C", "C"], ["C", "C", "C", "C", "C"], ["C", "A", "A", "A", "B"]]):
        samples = []
        for j, cp in enumerate(cps):
            e_out += 3 if cp == "C" else 0
            samples.append({"t_ms": tick, "cp": cp, "mode": "v2g", "soc_pm": 800 - tick // 1000, "w": -9000 if cp == "C"
                            else 0, "ma": 12000 + j, "mv": 230000, "mhz": 50010, "e_in_wh": 5, "e_out_wh": e_out,
                            "dis_cap_wh": 20000})
            tick += 1000
        out.append((now + k * 5000, samples))
    return out + [out[1]]


def test_pg_store_answers_as_the_sqlite_store(store, tmp_path):
    lite = SqliteStore(tmp_path / "api.db")
    now = pg.now_ms()
    st = "PAR-0001"
    store.register([(st, "zone-a")])
    news = []
    for ts, samples in batches_for_parity(now):
        news.append((store.add_samples(st, ts, samples), lite.add_samples(st, ts, samples)))
    assert news == [(5, 5), (5, 5), (5, 5), (0, 0)]             # the repeated batch stored once
    ev = {"code": "V2G-020", "on": True, "msg": "grid frequency high"}
    assert store.add_event(st, now, ev) and lite.add_event(st, now, ev)
    assert not store.add_event(st, now, ev) and not lite.add_event(st, now, ev)
    assert store.latest_sample(st) == lite.latest_sample(st)
    assert store.telemetry(st, now - 20000, now + 20000, 7) == lite.telemetry(st, now - 20000, now + 20000, 7)
    assert store.events(st, now - 1, now + 1, 10) == lite.events(st, now - 1, now + 1, 10)
    s_pg, s_lite = store.sessions(st, 10), lite.sessions(st, 10)
    assert s_pg == s_lite and len(s_pg) == 2 and s_pg[1]["energy_out_wh"] == 24
    for args in [("k1", "fp"), ("k1", "fp"), ("k1", "other")]:
        assert store.idem_begin("u", *args, 60_000, 60_000) == lite.idem_begin("u", *args, 60_000, 60_000)
    store.idem_finish("u", "k1", 202, {"ok": True})
    lite.idem_finish("u", "k1", 202, {"ok": True})
    assert store.idem_begin("u", "k1", "fp", 60_000, 60_000) == ("done", (202, {"ok": True})) == \
        lite.idem_begin("u", "k1", "fp", 60_000, 60_000)
    lite.close()


def test_one_station_reads_its_shard_fleet_aggregates_read_all_in_parallel(store):
    db = store._db()
    plan = "\n".join(r[0] for r in db.execute(
        "EXPLAIN VERBOSE SELECT t, doc FROM samples WHERE station = 'PAR-0001' ORDER BY t DESC LIMIT 1"))
    b, _ = bucket_shard(store, "PAR-0001")
    assert plan.count("Foreign Scan") == 1 and f"samples_b{b} " in plan and "WHERE ((station = 'PAR-0001'))" in plan
    plan = "\n".join(r[0] for r in db.execute(
        "EXPLAIN SELECT h, sum(d) FROM (SELECT station, t / 3600000 AS h, max(e_out_wh) - min(e_out_wh) AS d "
        "FROM samples GROUP BY station, h) x GROUP BY h"))
    # each shard aggregates its own buckets, all at once
    assert plan.count("Async Foreign Scan") == 6 and plan.count("Aggregate on") == 6


def test_fleet_wide_discharge_on_whole_minutes_reads_the_rollup_and_answers_as_the_samples(store, fleet):
    names = register(store, "FWD-", 12)
    now = pg.now_ms()
    for i, st in enumerate(names):
        store.add_samples(st, now - 120_000, [{"t_ms": k * 1000, "cp": "C", "e_out_wh": 100 * i + 3 * k}
                                              for k in range(0, 100, 7)])
    h = now // 3_600_000 * 3_600_000
    f, t = h - 26 * 3_600_000, h + 3_600_000                      # whole hours: the rollup
    db = store._db()
    want = db.execute("SELECT h, sum(d)::bigint, count(*) FROM (SELECT station, t / 3600000 AS h, "
                      "max(e_out_wh) - min(e_out_wh) AS d FROM samples WHERE t >= %s AND t < %s "
                      "GROUP BY station, h) x GROUP BY h ORDER BY h", (f, t)).fetchall()
    got = store.discharge_by_hour(f, t)
    assert [(r["hour"] // 3_600_000, r["discharged_wh"], r["stations"]) for r in got] == want
    assert sum(r["stations"] for r in got) >= 12
    plan = "\n".join(r[0] for r in db.execute(
        "EXPLAIN VERBOSE SELECT station, m / 3600000 AS h, max(e_out_max) - min(e_out_min) FROM minutes "
        "WHERE m >= 0 GROUP BY station, h"))
    assert plan.count("Async Foreign Scan") == 6 and "minutes_b" in plan       # each shard at once
    assert store.discharge_by_hour(f + 1, t)[-1] == got[-1]                    # off a minute: the samples


def test_migrate_is_versioned_and_one_command(fleet):
    p = subprocess.run(v2g("history", "migrate", "--store", fleet.dsn), capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "schema version 2" in p.stdout and "migration" not in p.stdout     # already applied: nothing again
    with pg.connect(fleet.dsn) as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(1,), (2,)]
    p = subprocess.run(v2g("history", "migrate", "--store", "mysql://x/y"), capture_output=True, text=True)
    assert p.returncode == 2 and "postgresql://" in p.stderr


def test_retention_drops_days_past_the_rule(root):
    f = LocalFleet(root / "retention", shards=1, retention_days=2)
    try:
        s = pg.PgStore(f.dsn)
        s.register([("RET-1", "zone-a")])
        now = pg.now_ms()
        s.add_samples("RET-1", now - 2 * 86_400_000, [{"t_ms": 0, "cp": "A"}])   # two days ago: kept today
        s.add_samples("RET-1", now, [{"t_ms": 0, "cp": "A"}])
        with pg.connect(f.dsn) as coord:
            today = pg.S.day_of(now)
            assert pg.maintain(coord, today=today, log=lambda m: None) == (0, 0)
            made, dropped = pg.maintain(coord, today=today + pg.S.datetime.timedelta(days=1), log=lambda m: None)
        assert (made, dropped) == (3, 3)          # one day each of samples, events and minutes, both ways
        assert [r["t"] for r in s.telemetry("RET-1", now - 3 * 86_400_000, now + 1, 10)] == [now]
        s.close()
    finally:
        f.close()


def test_migration_2_builds_the_rollup_of_the_rows_already_stored(root):
    """A fleet on schema version 1 (row trigger, no rollup) with rows stored: `migrate` adds the
    rollup, fills it from those rows, and the new trigger keeps it from then on."""
    f = LocalFleet(root / "upgrade", shards=1, buckets=1)
    try:
        now = pg.now_ms()
        with pg.connect(f.shards[0].dsn) as sh:         # back to what version 1 left on a shard
            sh.execute("DROP TRIGGER samples_new ON samples_b0")
            sh.execute("DROP FUNCTION samples_new_b0()")
            sh.execute("DROP TABLE minutes_b0")
            sh.execute("INSERT INTO samples_b0 (station, t, cp, w, doc) SELECT 'UP-1', %s - i * 1000, 'C', i, '{}' "
                       "FROM generate_series(0, 599) i", (now - 60_000,))
        with pg.connect(f.dsn) as coord:
            coord.execute("DELETE FROM schema_version WHERE version = 2")
        p = subprocess.run(v2g("history", "migrate", "--store", f.dsn), capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        assert "migration 2" in p.stdout and "schema version 2" in p.stdout
        s = pg.PgStore(f.dsn)
        s.register([("UP-1", "zone-a")])
        s.add_samples("UP-1", now, [{"t_ms": 0, "cp": "C", "w": 5}])
        pts = s.telemetry("UP-1", now - 3_600_000, now + 60_000, 10)      # whole minutes: the rollup
        assert sum(p["samples"] for p in pts) == 601 and max(p["w_max"] for p in pts) == 599
        s.close()
    finally:
        f.close()


# ---------------------------------------------------------------- ingest


def test_bad_messages_are_counted_never_stored_never_stop_the_worker(zone_a, store, fleet):
    _broker, workers, pub, _ = zone_a
    ok_st = register(store, "BAD-", 1)[0]
    before = [w.stats() for w in workers]
    now = pg.now_ms()
    for info in [pub.raw(f"v2g/{ok_st}/telemetry", b"{not json"),
                 pub.raw("v2g/NOT-IN-FLEET/telemetry", b'{"ts": %d, "samples": [{"t_ms": 0}]}' % now),
                 pub.batch(ok_st, now + 3600 * 1000, 0),                        # an hour ahead
                 pub.raw(f"v2g/{ok_st}/telemetry", b'{"ts": %d, "samples": 7}' % now),
                 pub.batch(ok_st, now, 0)]:                                      # the one good batch
        info.wait_for_publish(10)

    def counted():
        s = [w.stats() for w in workers]
        return {k: sum(x.get(k, 0) for x in s) - sum(x.get(k, 0) for x in before)
                for k in ("bad_json", "unknown_station", "future", "bad_shape")}
    assert pg.wait_for(lambda: counted() == {"bad_json": 1, "unknown_station": 1, "future": 1, "bad_shape": 1}, 20)
    assert wait_rows(fleet, "BAD-", 5, 20)[1] == (5, 5), rows_on_shards(fleet, "BAD-")
    assert all(w.proc.poll() is None for w in workers)
    logs = "".join(w.log_text() for w in workers)
    assert "not JSON" in logs and "'NOT-IN-FLEET' is not registered" in logs and "ahead of this worker's clock" in logs
    assert total(fleet, "NOT-IN-FLEET") == (0, 0)


def test_worker_killed_mid_batch_loses_nothing_stores_nothing_twice(zone_a, store, fleet):
    _broker, workers, pub, _ = zone_a
    stations = register(store, "KIL-", 200)
    want = publish_burst(pub, stations, 10, pg.now_ms() - 60_000)       # 2,000 messages, 10,000 samples
    w = workers[0]
    assert pg.wait_for(lambda: 0 < total(fleet, "KIL-")[0] < want, 30, 0.02), "no partial progress seen"
    w.kill()                                       # SIGKILL: whatever it had in hand is not acknowledged
    mid = total(fleet, "KIL-")
    w.start()                                      # same client id: its session and its share come back
    ok, got = wait_rows(fleet, "KIL-", want)
    assert ok and got == (want, want), (mid, got)
    time.sleep(1)                                  # redeliveries of already-committed rows still arriving
    assert total(fleet, "KIL-") == (want, want)
    assert total(fleet, "KIL-", "sessions") == (200, 200)     # one session per station, never split
    print(f"worker kill: {mid[0]} rows when killed, {got[0]} after restart, expected {want}")


def test_shard_stopped_waits_and_is_written_when_back_others_unaffected(zone_a, store, fleet):
    _broker, workers, pub, _ = zone_a
    stations = register(store, "SHD-", 60)
    down = 1
    on_down = [s for s in stations if bucket_shard(store, s)[1] == down]
    assert 0 < len(on_down) < len(stations)
    assert store.latest_sample(on_down[0]) is None          # the store's connection to that shard is made
    fleet.shards[down].stop("immediate")
    try:
        t0 = time.monotonic()
        want = publish_burst(pub, stations, 4, pg.now_ms() - 30_000)
        want_up = want * (len(stations) - len(on_down)) // len(stations)
        assert pg.wait_for(lambda: total(fleet, "SHD-")[0] >= want_up, 30, 0.1)
        time.sleep(1)
        up_rows = total(fleet, "SHD-")
        assert up_rows == (want_up, want_up)       # the other shards got everything meanwhile
        held = sum(w.stats().get("held", 0) for w in workers)
        assert held > 0                            # the stopped shard's messages wait, unacknowledged
    finally:
        fleet.shards[down].start()
    t_back = time.monotonic()
    ok, got = wait_rows(fleet, "SHD-", want)
    assert ok and got == (want, want)
    drained = time.monotonic() - t_back
    assert pg.wait_for(lambda: sum(w.stats().get("held", 1) for w in workers) == 0, 10)
    # the API's store answers at once: its dropped connection is made again, not an error
    assert store.latest_sample(on_down[0])[1]["cp"] == "C"
    print(f"shard stop: {up_rows[0]}/{want} rows while shard {down} was down "
          f"({time.monotonic() - t0:.1f} s), {held} messages held, all {got[0]} written {drained:.1f} s after it came back")


def test_broker_restart_loses_nothing(zone_a, store, fleet):
    broker, workers, pub, _ = zone_a
    stations = register(store, "BRK-", 100)
    want = publish_burst(pub, stations, 6, pg.now_ms() - 40_000)
    broker.stop()                                  # queued and in-flight messages saved with the sessions
    broker.start()
    ok, got = wait_rows(fleet, "BRK-", want, 60)
    assert ok and got == (want, want)
    assert all(w.proc.poll() is None for w in workers)
    # the zone's publisher is back too before the next test publishes (the workers may drain
    # the queue sooner than paho's client reconnects)
    assert pg.wait_for(pub.c.is_connected, 20)


def test_two_zones_one_lost_the_other_goes_on(zone_a, store, fleet, root):
    _broker_a, _workers_a, pub_a, _ = zone_a
    tmp_path = root / "zone_b"
    tmp_path.mkdir()
    broker_b = PlainBroker(tmp_path, "broker-b").start()
    wb = IngestProc(tmp_path, fleet.dsn, broker_b.url, "wb0").wait_subscribed()
    pub_b = Publisher(broker_b.url)
    try:
        za = register(store, "ZNA-", 30, "zone-a")
        zb = register(store, "ZNB-", 30, "zone-b")
        now = pg.now_ms() - 30_000
        wa, wb_ = publish_burst(pub_a, za, 2, now), publish_burst(pub_b, zb, 2, now)
        assert wait_rows(fleet, "ZNA-", wa)[1] == (wa, wa) and wait_rows(fleet, "ZNB-", wb_)[1] == (wb_, wb_)
        # zone b is lost: its broker and worker go; zone a's stations go on being stored
        wb.kill()
        broker_b.stop()
        more = publish_burst(pub_a, za, 2, now + 10_000)
        assert wait_rows(fleet, "ZNA-", wa + more)[1] == (wa + more, wa + more)
        assert total(fleet, "ZNB-") == (wb_, wb_)
        by_region = store.discharge_by_hour(now - 3_600_000, now + 3_600_000, region="zone-b")
        assert sum(r["stations"] for r in by_region) >= 30
    finally:
        pub_b.close()
        wb.stop()
        broker_b.stop()


# ---------------------------------------------------------------- operators' commands


def test_stats_and_export(fleet, store):
    p = subprocess.run(v2g("history", "stats", "--store", fleet.dsn), capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert len([ln for ln in p.stdout.splitlines()[1:] if ln.strip()]) == 6           # one line per bucket
    p = subprocess.run(v2g("history", "export", "--store", fleet.dsn, "PAR-0001"), capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    rows = list(csv.DictReader(io.StringIO(p.stdout)))
    assert len(rows) == 2 and rows[0]["energy_out_wh"] == "24"        # oldest first


def test_register_names_a_bad_line(fleet, tmp_path):
    f = tmp_path / "st.csv"
    f.write_text("station,region\nCS-1,zone-a\nCS-2\n")
    p = subprocess.run(v2g("history", "register", "--store", fleet.dsn, str(f)), capture_output=True, text=True)
    assert p.returncode == 1 and "line 3" in p.stderr and "station,region" in p.stderr



def test_adding_a_shard_by_moving_a_bucket(root):
    """docs/fleet.md's steps, as an operator runs them: a 1-shard fleet with 2 buckets gets a
    second shard; bucket 1 moves there with its rows and sessions."""
    f = LocalFleet(root / "grow", shards=1, buckets=2)
    new = LocalPg(root / "grow", "shard1").init().start()
    try:
        s = pg.PgStore(f.dsn)
        names = [f"GROW-{i}" for i in range(20)]
        s.register([(n, "zone-a") for n in names])
        now = pg.now_ms()
        for n in names:
            s.add_samples(n, now, [{"t_ms": 0, "cp": "C", "e_out_wh": 1}, {"t_ms": 1000, "cp": "C", "e_out_wh": 5}])
        moved = [n for n in names if s._station(n)[1] == 1]
        assert moved
        p = subprocess.run(v2g("history", "prepare-shard", "--store", f.dsn, "--shard", new.dsn, "--bucket", "1"),
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        dump = subprocess.run([str(PG_BIN / "pg_dump"), "-a", "--disable-triggers", "-t", "samples_b1_*",
                               "-t", "events_b1_*", "-t", "minutes_b1_*", "-t", "sessions_b1", f.shards[0].dsn],
                              capture_output=True, check=True, timeout=60).stdout
        subprocess.run([str(PG_BIN / "psql"), "-q", "-v", "ON_ERROR_STOP=1", new.dsn], input=dump,
                       capture_output=True, check=True, timeout=60)
        with pg.connect(f.dsn) as coord, coord.transaction():
            coord.execute("INSERT INTO shards (id, dsn) VALUES (1, %s)", (new.dsn,))
            coord.execute("UPDATE buckets SET shard = 1 WHERE bucket = 1")
            coord.execute("DROP FOREIGN TABLE samples_p1, events_p1, sessions_p1")
        p = subprocess.run(v2g("history", "migrate", "--store", f.dsn), capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        with pg.connect(f.shards[0].dsn) as old:
            old.execute("DROP TABLE samples_b1, events_b1, minutes_b1, sessions_b1")
        s.close()
        s = pg.PgStore(f.dsn)                       # restarted: reads the new bucket map
        for n in names:
            assert [r["samples"] for r in s.telemetry(n, now - 5000, now + 1, 1)] == [2], n
            # the rollup moved with the bucket: a long span still sees both samples
            assert sum(r["samples"] for r in s.telemetry(n, now - 3_600_000, now + 3_600_000, 10)) == 2, n
            assert [x["energy_out_wh"] for x in s.sessions(n, 5)] == [4], n
        assert sum(r["stations"] for r in s.discharge_by_hour(now - 3_600_000, now + 1)) == 20
        with pg.connect(new.dsn) as db:
            assert db.execute("SELECT count(DISTINCT station) FROM samples_b1").fetchone()[0] == len(moved)
        s.close()
    finally:
        new.stop("immediate")
        f.close()


# ---------------------------------------------------------------- rollup, sessions, worker cost


def _rows_read(plan, prefix):
    """Rows an EXPLAIN ANALYZE (JSON) plan read from the tables named prefix*."""
    n = 0
    if plan.get("Relation Name", "").startswith(prefix):
        n += plan["Actual Rows"] * plan.get("Actual Loops", 1)
    for sub in plan.get("Plans", []):
        n += _rows_read(sub, prefix)
    return n


def test_a_long_span_downsampled_reads_the_minute_rollup_and_answers_as_the_samples(store, fleet):
    st = register(store, "ROL-", 1)[0]
    b, shard = bucket_shard(store, st)
    day = pg.S.day_ms(pg.S.day_of(pg.now_ms())) - 86_400_000          # yesterday, inside retention
    ins = (f"INSERT INTO samples_b{b} (station, t, cp, soc_pm, w, ma, mv, mhz, e_in_wh, e_out_wh, dis_cap_wh, doc) "
           "SELECT %(s)s, %(d)s + i * 1000, 'C', 500 + i %% 400, (i %% 7000) - 3500, i %% 1000, "
           "CASE WHEN i %% 13 = 0 THEN NULL ELSE 230000 + i %% 7 END, 50000, i / 5, i / 3, 30000, '{}' "
           "FROM generate_series(%(a)s::int, %(z)s::int) i ON CONFLICT DO NOTHING")
    with pg.connect(fleet.shards[shard].dsn) as db:
        # three inserts, split inside minutes; the third is a redelivery: it must change nothing
        for a, z in ((0, 9_999), (10_000, 21_599), (5_000, 14_999)):
            db.execute(ins, {"s": st, "d": day, "a": a, "z": z})
        f, t = day + 1_234, day + 6 * 3_600_000 - 777                   # neither end on a minute
        q, args = pg.PgStore.telemetry_query(st, b, f, t, 50)
        raw = db.execute(f"SELECT (t - %(base)s) / %(w)s, min(t), avg(soc_pm), avg(w), min(w), max(w), avg(ma), "
                         "avg(mv), avg(mhz), max(e_in_wh), max(e_out_wh), avg(dis_cap_wh), count(*) "
                         f"FROM samples_b{b} WHERE station = %(s)s AND t >= %(f)s AND t < %(t)s GROUP BY 1 ORDER BY 1",
                         args).fetchall()
        want = [telemetry_point(r[1:]) for r in raw]
        plan = db.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + q, args).fetchone()[0][0]["Plan"]
    got = store.telemetry(st, f, t, 50)
    assert got == want and 0 < len(got) <= 50 and sum(p["samples"] for p in got) == 21_600 - 2
    assert args["w"] % 60_000 == 0                    # whole minutes per point
    # the samples read are the two partial minutes at the ends; the rest is the rollup's rows
    assert _rows_read(plan, f"samples_b{b}") < 120 and 300 < _rows_read(plan, f"minutes_b{b}") <= 360
    # a short span still reads the samples themselves, in the SQLite store's slices
    assert store.telemetry(st, day, day + 10_000, 5) == [telemetry_point((day + 2000 * k, *_avg_pair(k)))
                                                           for k in range(5)]


def _avg_pair(k):
    """The short-span expectation above: samples 2k and 2k+1 of the ROL- station."""
    i = (2 * k, 2 * k + 1)
    mv = [None if x % 13 == 0 else 230000 + x % 7 for x in i]
    mvs = [v for v in mv if v is not None]
    return (sum(500 + x for x in i) / 2, sum(x - 3500 for x in i) / 2, 2 * k - 3500, 2 * k + 1 - 3500,
            sum(i) / 2, sum(mvs) / len(mvs), 50000, (2 * k + 1) // 5, (2 * k + 1) // 3, 30000, 2)


def test_sessions_from_many_rows_per_insert_match_the_sqlite_store(fleet, store, tmp_path):
    """The workers insert thousands of rows per statement; the sessions trigger walks each
    station's new rows in time order: the same sessions as the SQLite store's row-by-row rule,
    with plug-out and plug-in inside one insert, a late batch, a redelivered one, SoC unknown."""
    from host_tools.history.ingest import Item, Worker
    lite = SqliteStore(tmp_path / "s.db")
    names = register(store, "SES-", 4)
    w = Worker(fleet.dsn, "mqtt://127.0.0.1:1")       # not started: its write path only
    t0 = pg.now_ms() - 600_000
    pattern = "AABCCCCDDCAAAAABBCCCCCAACCAAAABCCCCCAAAB"

    def batch(k, st_i):
        samples = [{"t_ms": (k * 5 + j) * 1000, "cp": pattern[(k * 5 + j + 3 * st_i) % 40],
                    "soc_pm": -1 if j == 2 else 600 - k * 5 - j, "w": -1000 * ((k + j + st_i) % 9),
                    "e_in_wh": k * 5 + j, "e_out_wh": 2 * (k * 5 + j)} for j in range(5)]
        return t0 + (k * 5 + 4) * 1000, samples

    def write(ks):
        items = {}
        for k in ks:
            for i, st in enumerate(names):
                ts, samples = batch(k, i)
                lite.add_samples(st, ts, samples)
                it = Item(None, 0, "s", st, w.bucket_of(st), sample_rows(st, ts, samples), ts)
                items.setdefault(w.bucket_shard[it.bucket], []).append(it)
        for shard, its in items.items():
            w._write_shard(shard, its)
        assert w.counters["write_errors"] == 0
    write(range(4))                                   # 20 rows per station in one insert
    write([5])
    write([4])                                        # late: its rows are older than the session's last
    write([5])                                        # redelivered
    write([6, 7])
    for st in names:
        got, want = store.sessions(st, 50), lite.sessions(st, 50)
        assert got == want and len(want) >= 3, (st, got, want)
    lite.close()
    w.coord.close()
    for db in w.shard_conns.values():
        db.close()


def _tls_client(port, ca, user, pw):
    import ssl

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=user, protocol=mqtt.MQTTv5)
    c.tls_set_context(ssl.create_default_context(cafile=str(ca)))
    c.username_pw_set(user, pw)
    c.connect("localhost", port)
    c.loop_start()
    return c


def test_the_history_account_reads_its_feed_over_tls_and_publishes_nothing(fleet, store, root):
    """The shipped broker set-up (deploy/mosquitto/v2g.conf and v2g.acl: TLS 1.3, passwords):
    a worker on the v2g-history-1 account takes the stations' telemetry through its shared
    subscription and stores it; the account cannot read a station's commands nor publish."""
    from bridge_helpers import Broker, make_ca
    d = root / "acl"
    d.mkdir()
    ca_key, ca_cert, ca_path = make_ca(d)
    broker = Broker(d / "broker", ca_key, ca_cert, ca_path, {"v2g-history-1": "h-pw", "v2g-bridge": "b-pw"})
    st = register(store, "ACL-", 1)[0]
    w = IngestProc(d, fleet.dsn, f"mqtts://v2g-history-1:h-pw@localhost:{broker.port}?cafile={ca_path}", "wacl")
    bridge = _tls_client(broker.port, ca_path, "v2g-bridge", "b-pw")
    try:
        w.wait_subscribed()
        doc = {"ts": pg.now_ms(), "samples": [{"t_ms": 0, "cp": "A"}, {"t_ms": 1000, "cp": "C"}]}
        bridge.publish(f"v2g/{st}/telemetry", json.dumps(doc), qos=1).wait_for_publish(10)
        assert wait_rows(fleet, "ACL-", 2, 30)[1] == (2, 2), w.log_text()[-2000:]
        w.stop()                                 # its account is one connection: now the probe's
        got, subscribed = [], threading.Event()
        probe = Subscriber("localhost", broker.port, "v2g-history-1", ["v2g/+/cmd", "v2g/+/telemetry"],
                           on_message=lambda mid, qos, topic, payload, gen: got.append(topic),
                           on_subscribed=lambda ok, codes: subscribed.set(), session_expiry_s=0,
                           username="v2g-history-1", password="h-pw",
                           tls=ssl.create_default_context(cafile=str(ca_path)))
        probe.start()
        assert subscribed.wait(10)
        seen = []
        bridge.subscribe("v2g/+/cmd", qos=1)
        bridge.on_message = lambda c, u, m: seen.append(m.payload)
        bridge.publish(f"v2g/{st}/cmd", b"bridge", qos=1).wait_for_publish(10)
        bridge.publish(f"v2g/{st}/telemetry", json.dumps(doc), qos=1).wait_for_publish(10)
        assert pg.wait_for(lambda: f"v2g/{st}/telemetry" in got and seen == [b"bridge"], 10), (got, seen)
        assert f"v2g/{st}/cmd" not in got                # published before the telemetry: refused to it
        probe.stop()
        hist = _tls_client(broker.port, ca_path, "v2g-history-1", "h-pw")
        hist.publish(f"v2g/{st}/cmd", b"history", qos=1).wait_for_publish(10)
        hist.loop_stop()
        hist.disconnect()
        bridge.publish(f"v2g/{st}/cmd", b"after", qos=1).wait_for_publish(10)
        assert pg.wait_for(lambda: seen[-1:] == [b"after"], 10), seen
        assert b"history" not in seen                    # its publish was dropped by the ACL
    finally:
        bridge.loop_stop()
        bridge.disconnect()
        w.stop()
        broker.stop()


def test_the_workers_connection_acknowledges_only_on_the_connection_a_message_came_on(root):
    """A connection lost with messages unacknowledged: the broker sends them again on the next
    one; an acknowledgement meant for the old connection is not sent (its packet id may name
    another message now), the new copy's is, and then nothing comes again."""
    d = root / "conn"
    d.mkdir()
    broker = PlainBroker(d, "broker").start()
    got, subscribed = [], threading.Event()
    sub = Subscriber("127.0.0.1", broker.port, "conn-test", ["$share/g/v2g/+/telemetry"],
                     on_message=lambda mid, qos, topic, payload, gen: got.append((mid, payload, gen)),
                     on_subscribed=lambda ok, codes: subscribed.set())
    pub = Publisher(broker.url)
    sub.start()
    try:
        assert subscribed.wait(10)
        pub.raw("v2g/C-1/telemetry", b"one").wait_for_publish(10)
        assert pg.wait_for(lambda: len(got) == 1, 10)
        (mid, payload, gen), = got
        subscribed.clear()
        sub.sock.shutdown(socket.SHUT_RDWR)           # the connection drops, "one" unacknowledged
        assert subscribed.wait(15) and pg.wait_for(lambda: len(got) == 2, 10), got
        mid2, payload2, gen2 = got[1]
        assert payload2 == b"one" and gen2 == gen + 1
        assert sub.ack([mid], gen) is False            # the old connection's: not sent
        assert sub.ack([mid2], gen2) is True
        pub.raw("v2g/C-1/telemetry", b"two").wait_for_publish(10)
        assert pg.wait_for(lambda: len(got) == 3, 10)
        subscribed.clear()
        sub.sock.shutdown(socket.SHUT_RDWR)           # "two" unacknowledged, "one" acknowledged
        assert subscribed.wait(15) and pg.wait_for(lambda: len(got) == 4, 10), got
        assert got[3][1] == b"two"                    # "one" is not sent again
        sub.ack([got[3][0]], got[3][2])
        pub.raw("v2g/C-1/telemetry", b"three").wait_for_publish(10)
        assert pg.wait_for(lambda: len(got) == 5, 10)
        assert [p for _m, p, _g in got] == [b"one", b"one", b"two", b"two", b"three"]
    finally:
        sub.stop()
        pub.close()
        broker.stop()
