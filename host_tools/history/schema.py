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

DEFAULTS = {"retention_days": "30", "premake_days": "3", "max_future_s": "300"}

# The session rule of the SQLite store (host_tools/api/store.py `_session_step`), per inserted row.
SESSION_FN = """
CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql
  SET search_path = public AS $$
DECLARE cur record; soc integer;
BEGIN
  soc := CASE WHEN NEW.soc_pm >= 0 THEN NEW.soc_pm END;
  SELECT start, last, soc_min, peak_dis_w INTO cur FROM {sess}
    WHERE station = NEW.station AND ended IS NULL ORDER BY start DESC LIMIT 1;
  IF NEW.cp IN ('B', 'C', 'D') THEN
    IF NOT FOUND THEN
      INSERT INTO {sess} VALUES (NEW.station, NEW.t, NEW.t, NULL, NEW.e_in_wh, NEW.e_out_wh, NEW.e_in_wh,
        NEW.e_out_wh, soc, soc, soc, greatest(0, -coalesce(NEW.w, 0))) ON CONFLICT DO NOTHING;
    ELSIF NEW.t >= cur.last THEN
      UPDATE {sess} SET last = NEW.t, e_in1 = NEW.e_in_wh, e_out1 = NEW.e_out_wh, soc1 = coalesce(soc, soc1),
        soc0 = coalesce(soc0, soc), soc_min = CASE WHEN soc IS NULL THEN cur.soc_min
                                              ELSE least(coalesce(cur.soc_min, soc), soc) END,
        peak_dis_w = greatest(coalesce(cur.peak_dis_w, 0), -coalesce(NEW.w, 0))
        WHERE station = NEW.station AND start = cur.start;
    END IF;
  ELSIF FOUND AND NEW.t >= cur.last THEN
    UPDATE {sess} SET ended = NEW.t WHERE station = NEW.station AND start = cur.start;
  END IF;
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
    cur.execute(SESSION_FN.format(fn=f"session_step_b{b}", sess=f"sessions_b{b}"))
    cur.execute(f"DROP TRIGGER IF EXISTS session_step ON samples_b{b}")
    cur.execute(f"CREATE TRIGGER session_step AFTER INSERT ON samples_b{b} FOR EACH ROW "
                f"EXECUTE FUNCTION session_step_b{b}()")


def shard_days(cur, bucket, today, retention_days, premake_days):
    """Make the day partitions of one bucket for [today - retention, today + premake] and drop
    the ones past retention. Returns (made, dropped) partition names."""
    made, dropped = [], []
    for i in range(-retention_days, premake_days + 1):
        d = today + datetime.timedelta(days=i)
        lo, hi = day_ms(d), day_ms(d) + DAY_MS
        for tbl in ("samples", "events"):
            name = f"{tbl}_b{bucket}_{d:%Y%m%d}"
            cur.execute("SELECT to_regclass(%s)", (name,))
            if cur.fetchone()[0] is None:
                cur.execute(f"CREATE TABLE {name} PARTITION OF {tbl}_b{bucket} FOR VALUES FROM ({lo}) TO ({hi})")
                made.append(name)
    oldest = day_ms(today) - retention_days * DAY_MS
    for tbl in ("samples", "events"):
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


def coord_attach(cur, bucket, modulus, shard):
    for tbl in ("samples", "events", "sessions"):
        name = f"{tbl}_p{bucket}"
        cur.execute("SELECT to_regclass(%s)", (name,))
        if cur.fetchone()[0] is None:
            cur.execute(sql.SQL("CREATE FOREIGN TABLE {} PARTITION OF {} FOR VALUES WITH (MODULUS {}, REMAINDER {}) "
                                "SERVER {} OPTIONS (table_name {})").format(
                sql.Identifier(name), sql.Identifier(tbl), sql.Literal(modulus), sql.Literal(bucket),
                sql.Identifier(server_name(shard)), sql.Literal(f"{tbl}_b{bucket}")))
