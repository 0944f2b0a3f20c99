"""The history store on PostgreSQL: the API's `Store` interface over a sharded fleet.

The store URL names the coordinator (postgresql://user@host:port/db); the shards behind it are
found in its `shards` table. One-station writes and reads go straight to the station's shard
(the coordinator names the bucket once per station): a batch is one INSERT there, and a query
runs whole next to the data, with no planner guess about pushing it down. Fleet-wide
aggregates go through the coordinator, whose hash partitions are postgres_fdw foreign tables,
and scan every shard at once (async foreign scans, partition-wise aggregation). The ingest
workers (ingest.py) write to the shards directly too.
"""

import json
import threading
import time

import psycopg

from host_tools.api.store import Store, now_ms, sample_rows, session_doc, slice_ms, telemetry_point
from host_tools.history import schema as S

SESSION_GUCS = ("SET enable_partitionwise_aggregate = on; SET enable_partitionwise_join = on; "
                "SET enable_async_append = on")


def connect(dsn, **kw):
    return psycopg.connect(dsn, autocommit=True, connect_timeout=5, **kw)


# ---------------------------------------------------------------- migrations

def _v1(coord, shard_dsns, buckets, settings, log):
    with coord.cursor() as cur:
        for stmt in S.COORD_V1.strip().split(";\n"):
            if stmt.strip():
                cur.execute(stmt)
        cur.execute("SELECT count(*) FROM shards")
        if cur.fetchone()[0] == 0:
            if not shard_dsns:
                raise ValueError("a new fleet needs its shards: --shard postgresql://... (one per shard)")
            for i, dsn in enumerate(shard_dsns):
                cur.execute("INSERT INTO shards (id, dsn) VALUES (%s, %s)", (i, dsn))
            n = buckets or len(shard_dsns)
            if n < len(shard_dsns):
                raise ValueError(f"--buckets {n}: fewer buckets than shards ({len(shard_dsns)})")
            for b in range(n):
                cur.execute("INSERT INTO buckets VALUES (%s, %s)", (b, b % len(shard_dsns)))
        for k, v in {**S.DEFAULTS, **settings}.items():
            cur.execute("INSERT INTO fleet VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value "
                        "WHERE %s", (k, str(v), k in settings))
        cur.execute("SELECT count(*) FROM buckets")
        modulus = cur.fetchone()[0]
        for shard, dsn, bucket in _layout(cur):
            with connect(dsn) as sh, sh.cursor() as sc:
                S.shard_bucket_ddl(sc, bucket)
            S.coord_server(cur, shard, dsn)
        S.coord_parents(cur)
        for shard, _dsn, bucket in _layout(cur):
            S.coord_attach(cur, bucket, modulus, shard)
        log(f"fleet: {len(set(s for s, _, _ in _layout(cur)))} shards, {modulus} buckets")


def _v2(coord, shard_dsns, buckets, settings, log):
    with coord.cursor() as cur:
        st = settings_of(cur)
        for _shard, dsn, bucket in _layout(cur):
            with connect(dsn) as sh, sh.transaction(), sh.cursor() as sc:
                S.samples_triggers(sc, bucket)
                S.shard_days(sc, bucket, S.day_of(now_ms()), st["retention_days"], st["premake_days"])
                S.rollup_minutes(sc, bucket)
        S.coord_parents(cur)          # `minutes` on the coordinator; attach() makes its foreign tables


MIGRATIONS = [
    (1, "fleet: stations, shards, buckets; samples, events, sessions hash-partitioned by station onto "
        "the shards (postgres_fdw), daily range partitions on each shard", _v1),
    (2, "per-minute rollup of the samples (minutes_b<k>, day partitions), kept with the sessions by one "
        "statement trigger per insert", _v2),
]


def _layout(cur):
    cur.execute("SELECT s.id, s.dsn, b.bucket FROM buckets b JOIN shards s ON s.id = b.shard ORDER BY b.bucket")
    return cur.fetchall()


def migrate(coord_dsn, shard_dsns=(), buckets=None, settings=None, log=print):
    """Apply every migration not yet applied (one advisory lock: two at once wait), then the
    day-partition upkeep. Returns the schema version."""
    settings = dict(settings or {})
    with connect(coord_dsn) as coord, coord.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(7220)")
        try:
            cur.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY, name text NOT NULL, "
                        "applied timestamptz NOT NULL DEFAULT now())")
            cur.execute("SELECT coalesce(max(version), 0) FROM schema_version")
            have = cur.fetchone()[0]
            for version, name, fn in MIGRATIONS:
                if version > have:
                    log(f"migration {version}: {name}")
                    fn(coord, list(shard_dsns), buckets, settings, log)
                    cur.execute("INSERT INTO schema_version (version, name) VALUES (%s, %s)", (version, name))
                    have = version
            if have >= 1:
                attach(coord)
            if settings and have >= 1:
                for k, v in settings.items():
                    cur.execute("UPDATE fleet SET value = %s WHERE key = %s", (str(v), k))
            maintain(coord, log=log)
            return have
        finally:
            cur.execute("SELECT pg_advisory_unlock(7220)")


def attach(coord):
    """Every shard's foreign server and every bucket's foreign tables, as `shards` and `buckets`
    say (made where missing; a server whose address changed is re-pointed). Run by each
    migrate: after a bucket moved or a shard's address changed."""
    with coord.cursor() as cur:
        cur.execute("SELECT count(*) FROM buckets")
        modulus = cur.fetchone()[0]
        layout = _layout(cur)
        for shard, dsn in sorted({(s, d) for s, d, _ in layout}):
            S.coord_server(cur, shard, dsn)
        for shard, _dsn, bucket in layout:
            S.coord_attach(cur, bucket, modulus, shard)


def settings_of(cur):
    cur.execute("SELECT key, value FROM fleet")
    return {k: int(v) for k, v in cur.fetchall()}


def maintain(coord, today=None, log=print):
    """Day partitions on every shard: made ahead, dropped past retention (schema.py's rule)."""
    with coord.cursor() as cur:
        st = settings_of(cur)
        layout = _layout(cur)
    today = today or S.day_of(now_ms())
    made = dropped = 0
    for _shard, dsn, bucket in layout:
        with connect(dsn) as sh, sh.cursor() as sc:
            m, d = S.shard_days(sc, bucket, today, st["retention_days"], st["premake_days"])
            made, dropped = made + len(m), dropped + len(d)
    log(f"partitions: {made} made, {dropped} dropped (retention {st['retention_days']} days)")
    return made, dropped


# ---------------------------------------------------------------- the store

class PgStore(Store):
    def __init__(self, url):
        self.url = url
        self._local = threading.local()
        self._all = []
        self._lock = threading.Lock()
        try:
            db = self._db()
        except psycopg.OperationalError as e:
            raise ValueError(f"--store {_no_password(url)!r}: the coordinator does not answer "
                             f"({str(e).splitlines()[0]})") from None
        layout = _layout(db.cursor())
        self.modulus = len(layout)
        self.bucket_dsn = {b: dsn for _s, dsn, b in layout}
        self._buckets = {}

    def _station(self, station):
        """(connection to the station's shard, its bucket): one-station reads go straight there,
        where the whole query (filter, GROUP BY, LIMIT) runs next to the data."""
        b = self._buckets.get(station)
        if b is None:
            b = self._db().execute("SELECT b FROM generate_series(0, %s - 1) b WHERE satisfies_hash_partition("
                                   "'samples'::regclass, %s, b, %s::text)",
                                   (self.modulus, self.modulus, station)).fetchone()[0]
            self._buckets[station] = b
        shards = getattr(self._local, "shards", None)
        if shards is None:
            shards = self._local.shards = {}
        db = shards.get(b)
        if db is None or db.closed or db.broken:
            db = shards[b] = connect(self.bucket_dsn[b])
            with self._lock:
                self._all.append(db)
        return db, b

    def _on_shard(self, station, statement):
        """Run statement(bucket) -> (SQL, parameters) on the station's shard. A connection the
        shard dropped (restarted, or its standby promoted) is made again and the statement run
        once more: each is a read or an insert the keys make idempotent."""
        db, b = self._station(station)
        try:
            return db.execute(*statement(b))
        except psycopg.OperationalError:
            if not (db.closed or db.broken):
                raise
            db, b = self._station(station)
            return db.execute(*statement(b))

    def _db(self):
        db = getattr(self._local, "db", None)
        if db is None or db.closed or db.broken:
            db = connect(self.url)
            db.execute(SESSION_GUCS)
            self._local.db = db
            with self._lock:
                self._all.append(db)
        return db

    def add_samples(self, station, ts_ms, samples):
        if not samples:
            return 0
        rows = sample_rows(station, ts_ms, samples)
        # one statement on the station's shard: its trigger walks the new rows in time order
        ph = "(" + ",".join(["%s"] * len(S.SAMPLE_COLS)) + ")"
        cur = self._on_shard(station, lambda b: (
            f"INSERT INTO samples_b{b} VALUES {','.join([ph] * len(rows))} ON CONFLICT DO NOTHING",
            [v for r in rows for v in r]))
        return max(0, cur.rowcount)

    def latest_sample(self, station):
        row = self._on_shard(station, lambda b: (
            f"SELECT t, doc FROM samples_b{b} WHERE station = %s ORDER BY t DESC LIMIT 1", (station,))).fetchone()
        return None if row is None else (row[0], json.loads(row[1]))

    def telemetry(self, station, t_from, t_to, points):
        cur = self._on_shard(station, lambda b: self.telemetry_query(station, b, t_from, t_to, points))
        return [telemetry_point(r[1:]) for r in cur]

    @staticmethod
    def telemetry_query(station, bucket, t_from, t_to, points):
        """(SQL, parameters) of one station's downsampled telemetry, run on its shard.

        Where a point covers less than a minute: the samples themselves, in `points` equal
        slices from t_from (the SQLite store's rule). Where it covers a minute or more: slices
        of whole UTC minutes counted from t_from's minute, as few as give at most `points`;
        the whole minutes inside [t_from, t_to) come from the per-minute rollup, the partial
        minutes at either end from the samples. A day at 1 Hz to 500 points reads 1,440 rollup
        rows and at most two minutes of samples instead of 86,400 samples."""
        M = S.MINUTE_MS
        width = slice_ms(t_from, t_to, points)
        lo, hi = -(-t_from // M) * M, t_to // M * M          # the whole minutes: [lo, hi)
        if width < M or hi <= lo:
            return (f"SELECT (t - %(f)s) / %(w)s AS b, min(t), avg(soc_pm), avg(w), min(w), max(w), avg(ma), "
                    "avg(mv), avg(mhz), max(e_in_wh), max(e_out_wh), avg(dis_cap_wh), count(*) "
                    f"FROM samples_b{bucket} WHERE station = %(s)s AND t >= %(f)s AND t < %(t)s "
                    "GROUP BY 1 ORDER BY 1", {"f": t_from, "w": width, "s": station, "t": t_to})
        base = t_from // M * M
        width = -(-slice_ms(base, t_to, points) // M) * M
        raw = ("SELECT t - t %% 60000 AS m, min(t) AS t0, count(*) AS n, count(soc_pm) AS soc_n, "
               "coalesce(sum(soc_pm), 0) AS soc_s, count(w) AS w_n, coalesce(sum(w), 0) AS w_s, min(w) AS w_min, "
               "max(w) AS w_max, count(ma) AS ma_n, coalesce(sum(ma), 0) AS ma_s, count(mv) AS mv_n, "
               "coalesce(sum(mv), 0) AS mv_s, count(mhz) AS mhz_n, coalesce(sum(mhz), 0) AS mhz_s, "
               "max(e_in_wh) AS e_in_max, max(e_out_wh) AS e_out_max, count(dis_cap_wh) AS cap_n, "
               f"coalesce(sum(dis_cap_wh), 0) AS cap_s FROM samples_b{bucket} WHERE station = %(s)s AND "
               "t >= {a} AND t < {b} GROUP BY 1")
        # the means in float8: integer sums below 2**53 divide to the same double as float(avg())
        q = ("SELECT (m - %(base)s) / %(w)s AS b, min(t0), sum(soc_s)::float8 / nullif(sum(soc_n), 0), "
             "sum(w_s)::float8 / nullif(sum(w_n), 0), min(w_min), max(w_max), "
             "sum(ma_s)::float8 / nullif(sum(ma_n), 0), sum(mv_s)::float8 / nullif(sum(mv_n), 0), "
             "sum(mhz_s)::float8 / nullif(sum(mhz_n), 0), max(e_in_max), max(e_out_max), "
             "sum(cap_s)::float8 / nullif(sum(cap_n), 0), sum(n)::bigint FROM ("
             "SELECT m, t0, n, soc_n, soc_s, w_n, w_s, w_min, w_max, ma_n, ma_s, mv_n, mv_s, mhz_n, mhz_s, "
             f"e_in_max, e_out_max, cap_n, cap_s FROM minutes_b{bucket} "
             "WHERE station = %(s)s AND m >= %(lo)s AND m < %(hi)s "
             "UNION ALL " + raw.format(a="%(f)s", b="%(lo)s") + " UNION ALL " + raw.format(a="%(hi)s", b="%(t)s") +
             ") x GROUP BY 1 ORDER BY 1")
        return q, {"base": base, "w": width, "s": station, "f": t_from, "t": t_to, "lo": lo, "hi": hi}

    def add_event(self, station, ts_ms, event):
        cur = self._on_shard(station, lambda b: (f"INSERT INTO events_b{b} VALUES (%s,%s,%s,%s,%s) "
                                                 "ON CONFLICT DO NOTHING", event_row(station, ts_ms, event)))
        return cur.rowcount == 1

    def events(self, station, t_from, t_to, limit):
        rows = self._on_shard(station, lambda b: (
            f'SELECT t, code, "on", msg FROM events_b{b} WHERE station = %s AND t >= %s AND t < %s '
            "ORDER BY t DESC LIMIT %s", (station, t_from, t_to, limit))).fetchall()
        return [{"t": t, "code": c, "on": bool(o), "msg": m} for t, c, o, m in rows]

    def sessions(self, station, limit):
        rows = self._on_shard(station, lambda b: (
            "SELECT start, last, ended, e_in0, e_out0, e_in1, e_out1, soc0, soc1, soc_min, "
            f"peak_dis_w FROM sessions_b{b} WHERE station = %s ORDER BY start DESC LIMIT %s", (station, limit))).fetchall()
        return [session_doc(r) for r in rows]

    # -- idempotency keys: on the coordinator (small, not per station)

    def idem_begin(self, scope, key, fingerprint, ttl_ms, stale_pending_ms):
        db = self._db()
        now = now_ms()
        with db.transaction(), db.cursor() as cur:
            cur.execute("INSERT INTO idem VALUES (%s,%s,%s,'pending',NULL,NULL,%s) ON CONFLICT DO NOTHING",
                        (scope, key, fingerprint, now))
            if cur.rowcount == 1:
                return ("new", None)
            cur.execute("SELECT fp, state, status, body, created FROM idem WHERE scope=%s AND key=%s FOR UPDATE",
                        (scope, key))
            fp, state, status, body, created = cur.fetchone()
            if created < now - ttl_ms or (state == "pending" and created < now - stale_pending_ms):
                cur.execute("UPDATE idem SET fp=%s, state='pending', status=NULL, body=NULL, created=%s "
                            "WHERE scope=%s AND key=%s", (fingerprint, now, scope, key))
                return ("new", None)
            if fp != fingerprint:
                return ("mismatch", None)
            if state == "pending":
                return ("pending", None)
            return ("done", (status, json.loads(body)))

    def idem_finish(self, scope, key, status, body):
        self._db().execute("UPDATE idem SET state='done', status=%s, body=%s WHERE scope=%s AND key=%s",
                           (status, json.dumps(body, separators=(",", ":")), scope, key))

    def idem_forget(self, scope, key):
        self._db().execute("DELETE FROM idem WHERE scope=%s AND key=%s", (scope, key))

    def purge(self, idem_before_ms):
        self._db().execute("DELETE FROM idem WHERE created < %s", (idem_before_ms,))

    def close(self):
        with self._lock:
            for db in self._all:
                try:
                    db.close()
                except psycopg.Error:
                    pass
            self._all.clear()
        self._local = threading.local()

    # -- fleet operations (not part of the API's interface)

    def register(self, stations):
        """stations: iterable of (station id, region)."""
        with self._db().cursor() as cur:
            cur.executemany("INSERT INTO stations VALUES (%s, %s) ON CONFLICT (station) DO UPDATE SET "
                            "region = EXCLUDED.region", list(stations))

    def discharge_by_hour(self, t_from, t_to, region=None):
        """Energy discharged (Wh, from the meters' export registers) per UTC hour across the
        fleet: per station and hour on each shard in parallel, summed here. From the per-minute
        rollup (60 times fewer rows) when both ends are on whole minutes, as a dashboard asks;
        else from the samples. Both give the same: the hour's highest register less its lowest."""
        if t_from % S.MINUTE_MS == 0 and t_to % S.MINUTE_MS == 0:
            inner = ("SELECT station, m / 3600000 AS h, max(e_out_max) - min(e_out_min) AS d FROM minutes "
                     "WHERE m >= %(f)s AND m < %(t)s GROUP BY station, h")
        else:
            inner = ("SELECT station, t / 3600000 AS h, max(e_out_wh) - min(e_out_wh) AS d FROM samples "
                     "WHERE t >= %(f)s AND t < %(t)s GROUP BY station, h")
        where = ""
        if region:
            where = "WHERE station IN (SELECT station FROM stations WHERE region = %(r)s)"
        q = f"SELECT h, sum(d)::bigint, count(*) FROM ({inner}) per_station {where} GROUP BY h ORDER BY h"
        rows = self._db().execute(q, {"f": t_from, "t": t_to, "r": region}).fetchall()
        return [{"hour": h * 3600000, "discharged_wh": d, "stations": n} for h, d, n in rows]

    def export_sessions(self, station):
        rows = self._on_shard(station, lambda b: (
            "SELECT start, last, ended, e_in0, e_out0, e_in1, e_out1, soc0, soc1, soc_min, "
            f"peak_dis_w FROM sessions_b{b} WHERE station = %s ORDER BY start", (station,))).fetchall()
        return [session_doc(r) for r in rows]

    def stats(self):
        """Rows per shard and bucket, newest sample and its age."""
        db = self._db()
        layout = _layout(db.cursor())
        now = now_ms()
        out = []
        for shard, dsn, bucket in layout:
            row = {"shard": shard, "bucket": bucket, "dsn": _no_password(dsn)}
            try:
                with connect(dsn) as sh:
                    n, newest = sh.execute(f"SELECT count(*), max(t) FROM samples_b{bucket}").fetchone()
                    ev = sh.execute(f"SELECT count(*) FROM events_b{bucket}").fetchone()[0]
                    se = sh.execute(f"SELECT count(*) FROM sessions_b{bucket}").fetchone()[0]
                row.update(samples=n, events=ev, sessions=se, newest=newest,
                           lag_ms=None if newest is None else now - newest, up=True)
            except psycopg.OperationalError as e:
                row.update(up=False, error=str(e).splitlines()[0])
            out.append(row)
        return out


def _no_password(dsn):
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    info.pop("password", None)
    return psycopg.conninfo.make_conninfo(**info)


def event_row(station, ts_ms, event):
    return (station, ts_ms, str(event.get("code")), bool(event.get("on")), str(event.get("msg", ""))[:500])


def wait_for(pred, timeout=30, step=0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return False
