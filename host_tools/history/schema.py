"""The fleet schema, its versioned migrations and the daily partition upkeep.

Layout (one coordinator, N shard instances, all PostgreSQL 15):

    coordinator   stations (id, region), shards (id, dsn), buckets (bucket -> shard),
                  idem (Idempotency-Key records), fleet (settings), schema_version;
                  samples / events / sessions: partitioned BY HASH (station) into B buckets,
                  each bucket a postgres_fdw foreign table on the shard that holds it
    shard         samples_b<k>, events_b<k>: partitioned BY RANGE (t), one partition per UTC
                  day (samples_b<k>_<yyyymmdd>); sessions_b<k>: one row per plug-in,
                  kept by a trigger on samples_b<k> that runs only for rows really inserted,
                  so a redelivered batch leaves the sessions as they were

A station's bucket is PostgreSQL's own hash partitioning (satisfies_hash_partition), so the
coordinator prunes a one-station query to one foreign table, i.e. one shard. More buckets
than shards leave room to add a shard by moving whole buckets (docs/fleet.md).

Retention rule: a day partition is dropped once its day ended more than `retention_days`
before the current UTC day began; `premake_days` partitions are made ahead. The ingest
workers refuse samples outside [start of today - retention_days, now + max_future_s].
"""

import datetime

import psycopg
from psycopg import sql

DAY_MS = 86_400_000

SAMPLE_COLS = ("station", "t", "t_ms", "cp", "mode", "soc_pm", "w", "ma", "mv", "mhz", "e_in_wh", "e_out_wh",
               "dis_cap_wh", "doc")
EVENT_COLS = ("station", "t", "code", "on", "msg")

SAMPLES_DDL = """station text NOT NULL, t bigint NOT NULL, t_ms bigint, cp text, mode text, soc_pm integer,
    w integer, ma integer, mv integer, mhz integer, e_in_wh bigint, e_out_wh bigint, dis_cap_wh bigint,
    doc text NOT NULL"""
EVENTS_DDL = """station text NOT NULL, t bigint NOT NULL, code text NOT NULL, "on" boolean NOT NULL, msg text"""
SESSIONS_DDL = """station text NOT NULL, start bigint NOT NULL, last bigint NOT NULL, ended bigint,
    e_in0 bigint, e_out0 bigint, e_in1 bigint, e_out1 bigint, soc0 integer, soc1 integer, soc_min integer,
    peak_dis_w integer"""

DAY_TABLES = ("samples", "events", "minutes")    # one partition per UTC day each
DEFAULTS = {"retention_days": "30", "premake_days": "3", "max_future_s": "300"}

MINUTES_DDL = """station text NOT NULL, m bigint NOT NULL, t0 bigint NOT NULL, n integer NOT NULL,
    soc_n integer NOT NULL, soc_s bigint NOT NULL, w_n integer NOT NULL, w_s bigint NOT NULL, w_min integer,
    w_max integer, ma_n integer NOT NULL, ma_s bigint NOT NULL, mv_n integer NOT NULL, mv_s bigint NOT NULL,
    mhz_n integer NOT NULL, mhz_s bigint NOT NULL, e_in_max bigint, e_out_min bigint, e_out_max bigint,
    cap_n integer NOT NULL, cap_s bigint NOT NULL"""
MINUTE_MS = 60_000

# Run once per INSERT statement on samples_b<k>, over the rows that statement really inserted
# (the transition table leaves out rows skipped by ON CONFLICT, so a redelivered batch changes
# nothing):
# - the per-minute rollup minutes_b<k>: counts, sums and extremes per (station, minute), so a
#   day of one station downsampled reads 1,440 rows instead of 86,400;
# - the sessions: the SQLite store's rule (host_tools/api/store.py `_session_step`) applied to
#   each row in (station, t) order, each station's open session read once and written once.
SAMPLES_FN = """
CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql
  SET search_path = public AS $$
DECLARE r record; st text; soc integer; open boolean := false; fresh boolean := false; dirty boolean := false;
  s_start bigint; s_last bigint; s_ended bigint; s_ein0 bigint; s_eout0 bigint; s_ein1 bigint; s_eout1 bigint;
  s_soc0 integer; s_soc1 integer; s_socmin integer; s_peak integer;
BEGIN
  INSERT INTO {mins} AS x SELECT station, t - t % 60000, min(t), count(*), count(soc_pm), coalesce(sum(soc_pm), 0),
      count(w), coalesce(sum(w), 0), min(w), max(w), count(ma), coalesce(sum(ma), 0), count(mv),
      coalesce(sum(mv), 0), count(mhz), coalesce(sum(mhz), 0), max(e_in_wh), min(e_out_wh), max(e_out_wh),
      count(dis_cap_wh), coalesce(sum(dis_cap_wh), 0)
    FROM new_rows GROUP BY 1, 2 ORDER BY 1, 2
  ON CONFLICT (station, m) DO UPDATE SET t0 = least(x.t0, EXCLUDED.t0), n = x.n + EXCLUDED.n,
    soc_n = x.soc_n + EXCLUDED.soc_n, soc_s = x.soc_s + EXCLUDED.soc_s, w_n = x.w_n + EXCLUDED.w_n,
    w_s = x.w_s + EXCLUDED.w_s, w_min = least(x.w_min, EXCLUDED.w_min), w_max = greatest(x.w_max, EXCLUDED.w_max),
    ma_n = x.ma_n + EXCLUDED.ma_n, ma_s = x.ma_s + EXCLUDED.ma_s, mv_n = x.mv_n + EXCLUDED.mv_n,
    mv_s = x.mv_s + EXCLUDED.mv_s, mhz_n = x.mhz_n + EXCLUDED.mhz_n, mhz_s = x.mhz_s + EXCLUDED.mhz_s,
    e_in_max = greatest(x.e_in_max, EXCLUDED.e_in_max), e_out_min = least(x.e_out_min, EXCLUDED.e_out_min),
    e_out_max = greatest(x.e_out_max, EXCLUDED.e_out_max), cap_n = x.cap_n + EXCLUDED.cap_n,
    cap_s = x.cap_s + EXCLUDED.cap_s;

  -- the last row (station NULL) only writes the last station's session
  FOR r IN SELECT * FROM (SELECT 0 AS o, station, t, cp, soc_pm, w, e_in_wh, e_out_wh FROM new_rows
                          UNION ALL SELECT 1, NULL, NULL, NULL, NULL, NULL, NULL, NULL) x
           ORDER BY o, station, t LOOP
    IF r.station IS DISTINCT FROM st THEN
      IF dirty THEN
        IF fresh THEN
          INSERT INTO {sess} VALUES (st, s_start, s_last, s_ended, s_ein0, s_eout0, s_ein1, s_eout1, s_soc0, s_soc1,
            s_socmin, s_peak) ON CONFLICT DO NOTHING;
        ELSE
          UPDATE {sess} SET last = s_last, ended = s_ended, e_in1 = s_ein1, e_out1 = s_eout1, soc0 = s_soc0,
            soc1 = s_soc1, soc_min = s_socmin, peak_dis_w = s_peak WHERE station = st AND start = s_start;
        END IF;
      END IF;
      EXIT WHEN r.station IS NULL;
      st := r.station;
      SELECT start, last, e_in0, e_out0, e_in1, e_out1, soc0, soc1, soc_min, peak_dis_w
        INTO s_start, s_last, s_ein0, s_eout0, s_ein1, s_eout1, s_soc0, s_soc1, s_socmin, s_peak
        FROM {sess} WHERE station = st AND ended IS NULL ORDER BY start DESC LIMIT 1;
      open := FOUND; fresh := false; dirty := false; s_ended := NULL;
    END IF;
    soc := CASE WHEN r.soc_pm >= 0 THEN r.soc_pm END;
    IF r.cp IN ('B', 'C', 'D') THEN
      IF NOT open THEN
        open := true; fresh := true; dirty := true; s_ended := NULL;
        s_start := r.t; s_last := r.t; s_ein0 := r.e_in_wh; s_eout0 := r.e_out_wh; s_ein1 := r.e_in_wh;
        s_eout1 := r.e_out_wh; s_soc0 := soc; s_soc1 := soc; s_socmin := soc; s_peak := greatest(0, -coalesce(r.w, 0));
      ELSIF r.t >= s_last THEN
        dirty := true;
        s_last := r.t; s_ein1 := r.e_in_wh; s_eout1 := r.e_out_wh; s_soc1 := coalesce(soc, s_soc1);
        s_soc0 := coalesce(s_soc0, soc);
        s_socmin := CASE WHEN soc IS NULL THEN s_socmin ELSE least(coalesce(s_socmin, soc), soc) END;
        s_peak := greatest(coalesce(s_peak, 0), -coalesce(r.w, 0));
      END IF;
    ELSIF open AND r.t >= s_last THEN
      -- unplugged: the session ends here and is written now; a later plug-in opens another
      IF fresh THEN
        INSERT INTO {sess} VALUES (st, s_start, s_last, r.t, s_ein0, s_eout0, s_ein1, s_eout1, s_soc0, s_soc1,
          s_socmin, s_peak) ON CONFLICT DO NOTHING;
      ELSE
        UPDATE {sess} SET last = s_last, ended = r.t, e_in1 = s_ein1, e_out1 = s_eout1, soc0 = s_soc0,
          soc1 = s_soc1, soc_min = s_socmin, peak_dis_w = s_peak WHERE station = st AND start = s_start;
      END IF;
      open := false; fresh := false; dirty := false;
    END IF;
  END LOOP;
  RETURN NULL;
END $$;
"""


def day_of(ms):
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).date()


def day_ms(day):
    return int(datetime.datetime(day.year, day.month, day.day, tzinfo=datetime.timezone.utc).timestamp() * 1000)


# ---------------------------------------------------------------- shard side

def shard_bucket_ddl(cur, bucket):
    b = bucket
    cur.execute(f"CREATE TABLE IF NOT EXISTS samples_b{b} ({SAMPLES_DDL}, PRIMARY KEY (station, t)) "
                "PARTITION BY RANGE (t)")
    cur.execute(f'CREATE TABLE IF NOT EXISTS events_b{b} ({EVENTS_DDL}, PRIMARY KEY (station, t, code, "on")) '
                "PARTITION BY RANGE (t)")
    cur.execute(f"CREATE TABLE IF NOT EXISTS sessions_b{b} ({SESSIONS_DDL}, PRIMARY KEY (station, start))")
    samples_triggers(cur, b)


def samples_triggers(cur, b):
    """The per-minute rollup and its day partitions' parent, and the one statement trigger that
    keeps it and the sessions (replacing the row trigger of schema version 1)."""
    cur.execute(f"CREATE TABLE IF NOT EXISTS minutes_b{b} ({MINUTES_DDL}, PRIMARY KEY (station, m)) "
                "PARTITION BY RANGE (m)")
    cur.execute(SAMPLES_FN.format(fn=f"samples_new_b{b}", sess=f"sessions_b{b}", mins=f"minutes_b{b}"))
    cur.execute(f"DROP TRIGGER IF EXISTS session_step ON samples_b{b}")
    cur.execute(f"DROP FUNCTION IF EXISTS session_step_b{b}()")
    cur.execute(f"DROP TRIGGER IF EXISTS samples_new ON samples_b{b}")
    cur.execute(f"CREATE TRIGGER samples_new AFTER INSERT ON samples_b{b} REFERENCING NEW TABLE AS new_rows "
                f"FOR EACH STATEMENT EXECUTE FUNCTION samples_new_b{b}()")


def rollup_minutes(cur, bucket, station=None, t_from=None, t_to=None):
    """(Re)compute the per-minute rollup from the samples: one station's whole minutes around
    [t_from, t_to), or the whole bucket. For rows loaded with the triggers off (a bulk load, a
    bucket copied with pg_dump --disable-triggers) and for the rows stored before version 2."""
    where, args = "", []
    if station is not None:
        lo = t_from - t_from % MINUTE_MS
        hi = t_to - t_to % MINUTE_MS + (MINUTE_MS if t_to % MINUTE_MS else 0)
        where, args = "WHERE station = %s AND {c} >= %s AND {c} < %s", [station, lo, hi]
    cur.execute(f"DELETE FROM minutes_b{bucket} " + where.format(c="m"), args)
    cur.execute(f"INSERT INTO minutes_b{bucket} SELECT station, t - t %% 60000, min(t), count(*), count(soc_pm), "
                "coalesce(sum(soc_pm), 0), count(w), coalesce(sum(w), 0), min(w), max(w), count(ma), "
                "coalesce(sum(ma), 0), count(mv), coalesce(sum(mv), 0), count(mhz), coalesce(sum(mhz), 0), "
                "max(e_in_wh), min(e_out_wh), max(e_out_wh), count(dis_cap_wh), coalesce(sum(dis_cap_wh), 0) "
                f"FROM samples_b{bucket} {where.format(c='t')} GROUP BY 1, 2", args)


def shard_days(cur, bucket, today, retention_days, premake_days):
    """Make the day partitions of one bucket for [today - retention, today + premake] and drop
    the ones past retention. Returns (made, dropped) partition names."""
    made, dropped = [], []
    for i in range(-retention_days, premake_days + 1):
        d = today + datetime.timedelta(days=i)
        lo, hi = day_ms(d), day_ms(d) + DAY_MS
        for tbl in DAY_TABLES:
            name = f"{tbl}_b{bucket}_{d:%Y%m%d}"
            cur.execute("SELECT to_regclass(%s)", (name,))
            if cur.fetchone()[0] is None:
                cur.execute(f"CREATE TABLE {name} PARTITION OF {tbl}_b{bucket} FOR VALUES FROM ({lo}) TO ({hi})")
                made.append(name)
    oldest = day_ms(today) - retention_days * DAY_MS
    for tbl in DAY_TABLES:
        cur.execute("SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
                    "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass",
                    (f"{tbl}_b{bucket}",))
        for name, bound in cur.fetchall():
            hi = int(bound.rsplit("TO ('", 1)[1].split("'")[0])
            if hi <= oldest:
                cur.execute(f"DROP TABLE {name}")
                dropped.append(name)
    return made, dropped


# ---------------------------------------------------------------- coordinator side

COORD_V1 = """
CREATE EXTENSION IF NOT EXISTS postgres_fdw;
CREATE TABLE IF NOT EXISTS fleet (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS stations (station text PRIMARY KEY, region text NOT NULL);
CREATE TABLE IF NOT EXISTS shards (id integer PRIMARY KEY, dsn text NOT NULL, region text);
CREATE TABLE IF NOT EXISTS buckets (bucket integer PRIMARY KEY, shard integer NOT NULL REFERENCES shards(id));
CREATE TABLE IF NOT EXISTS idem (scope text NOT NULL, key text NOT NULL, fp text NOT NULL, state text NOT NULL,
    status integer, body text, created bigint NOT NULL, PRIMARY KEY (scope, key));
"""


def server_name(shard):
    return f"shard_{shard}"


def coord_server(cur, shard, dsn):
    """The postgres_fdw server and user mapping for one shard (re-pointed if it moved)."""
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    opts = {"host": info.get("host", "127.0.0.1"), "port": str(info.get("port", 5432)),
            "dbname": info.get("dbname", "v2g"),
            # shards are scanned concurrently under an Append (fleet-wide queries)
            "async_capable": "true", "batch_size": "1000", "fetch_size": "10000"}
    name = server_name(shard)
    cur.execute("SELECT 1 FROM pg_foreign_server WHERE srvname = %s", (name,))
    if cur.fetchone() is None:
        cur.execute(sql.SQL("CREATE SERVER {} FOREIGN DATA WRAPPER postgres_fdw OPTIONS ({})").format(
            sql.Identifier(name), sql.SQL(", ").join(sql.SQL("{} {}").format(sql.SQL(k), sql.Literal(v))
                                                     for k, v in opts.items())))
    else:
        cur.execute(sql.SQL("ALTER SERVER {} OPTIONS ({})").format(
            sql.Identifier(name), sql.SQL(", ").join(sql.SQL("SET {} {}").format(sql.SQL(k), sql.Literal(v))
                                                     for k, v in opts.items())))
    um = {"user": info.get("user", "v2g")}
    if info.get("password"):
        um["password"] = info["password"]
    cur.execute("SELECT 1 FROM pg_user_mappings WHERE srvname = %s AND usename = current_user", (name,))
    verb = "ALTER" if cur.fetchone() else "CREATE"
    kv = sql.SQL(", ").join(sql.SQL("{}{} {}").format(sql.SQL("SET " if verb == "ALTER" else ""), sql.SQL(k),
                                                      sql.Literal(v)) for k, v in um.items())
    cur.execute(sql.SQL(verb + " USER MAPPING FOR CURRENT_USER SERVER {} OPTIONS ({})").format(
        sql.Identifier(name), kv))


def coord_parents(cur):
    cur.execute(f"CREATE TABLE IF NOT EXISTS samples ({SAMPLES_DDL}) PARTITION BY HASH (station)")
    cur.execute(f"CREATE TABLE IF NOT EXISTS events ({EVENTS_DDL}) PARTITION BY HASH (station)")
    cur.execute(f"CREATE TABLE IF NOT EXISTS sessions ({SESSIONS_DDL}) PARTITION BY HASH (station)")
    cur.execute(f"CREATE TABLE IF NOT EXISTS minutes ({MINUTES_DDL}) PARTITION BY HASH (station)")


def coord_attach(cur, bucket, modulus, shard):
    for tbl in ("samples", "events", "sessions", "minutes"):
        name = f"{tbl}_p{bucket}"
        cur.execute("SELECT to_regclass(%s)", (name,))
        if cur.fetchone()[0] is None:
            cur.execute(sql.SQL("CREATE FOREIGN TABLE {} PARTITION OF {} FOR VALUES WITH (MODULUS {}, REMAINDER {}) "
                                "SERVER {} OPTIONS (table_name {})").format(
                sql.Identifier(name), sql.Identifier(tbl), sql.Literal(modulus), sql.Literal(bucket),
                sql.Identifier(server_name(shard)), sql.Literal(f"{tbl}_b{bucket}")))
