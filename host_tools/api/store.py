"""The API's history store: telemetry, events, sessions and idempotency keys.

`Store` is the interface; `SqliteStore` (one file, WAL, the default) implements it. Another
engine (PostgreSQL, sharded by station) goes behind the same methods: nothing else in the API
touches SQL. Every write is idempotent, so a message the broker delivers twice (QoS 1 after an
API restart) is stored once:

    samples   one row per (station, wall-clock ms); a batch's wall time comes from the
              bridge's `ts` (ms since the epoch when it published), each sample placed
              `t_ms` before the last one of its batch
    events    one row per (station, wall ms, code, on)
    sessions  made from the samples as they arrive: a session runs while the pilot shows a
              vehicle (B, C or D); energy in/out from the meter registers at its start and end,
              SoC at start and end, lowest SoC, peak discharge power
    idem      Idempotency-Key records: (scope, key) -> request fingerprint, state
              (pending | done), the stored HTTP status and body, created time

Times are integer ms since the epoch. All methods are thread-safe (one connection per thread).
"""

import json
import sqlite3
import threading
import time
import urllib.parse
from pathlib import Path

PLUGGED = ("B", "C", "D")


def now_ms():
    return int(time.time() * 1000)


class Store:
    """What the API needs from a history store."""

    def add_samples(self, station: str, ts_ms: int, samples: list) -> int:
        """Store one telemetry batch; returns how many samples were new."""
        raise NotImplementedError

    def add_event(self, station: str, ts_ms: int, event: dict) -> bool:
        raise NotImplementedError

    def latest_sample(self, station: str):
        """(wall ms, sample dict) of the newest sample, or None."""
        raise NotImplementedError

    def telemetry(self, station: str, t_from: int, t_to: int, points: int) -> list:
        """At most `points` rows {t, soc_pct, w, ma, mv, mhz, ...} between the two times,
        each the mean of an equal slice of the range (power extremes kept as w_min/w_max)."""
        raise NotImplementedError

    def events(self, station: str, t_from: int, t_to: int, limit: int) -> list:
        raise NotImplementedError

    def sessions(self, station: str, limit: int) -> list:
        raise NotImplementedError

    # Idempotency-Key records (draft-ietf-httpapi-idempotency-key-header)
    def idem_begin(self, scope: str, key: str, fingerprint: str, ttl_ms: int, stale_pending_ms: int):
        """('new', None) after reserving the key; ('pending', None) while the first request
        runs; ('mismatch', None) if the key came with another request; ('done', (status, body))."""
        raise NotImplementedError

    def idem_finish(self, scope: str, key: str, status: int, body: dict):
        raise NotImplementedError

    def idem_forget(self, scope: str, key: str):
        """Drop a reservation whose request failed in a way worth retrying with the same key."""
        raise NotImplementedError

    def purge(self, idem_before_ms: int):
        raise NotImplementedError

    def close(self):
        pass


SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    station TEXT NOT NULL, t INTEGER NOT NULL, t_ms INTEGER, cp TEXT, mode TEXT,
    soc_pm INTEGER, w INTEGER, ma INTEGER, mv INTEGER, mhz INTEGER,
    e_in_wh INTEGER, e_out_wh INTEGER, dis_cap_wh INTEGER, doc TEXT NOT NULL,
    PRIMARY KEY (station, t)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    station TEXT NOT NULL, t INTEGER NOT NULL, code TEXT NOT NULL, "on" INTEGER NOT NULL,
    msg TEXT, PRIMARY KEY (station, t, code, "on")) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sessions (
    station TEXT NOT NULL, start INTEGER NOT NULL, last INTEGER NOT NULL, ended INTEGER,
    e_in0 INTEGER, e_out0 INTEGER, e_in1 INTEGER, e_out1 INTEGER,
    soc0 INTEGER, soc1 INTEGER, soc_min INTEGER, peak_dis_w INTEGER,
    PRIMARY KEY (station, start)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS idem (
    scope TEXT NOT NULL, key TEXT NOT NULL, fp TEXT NOT NULL, state TEXT NOT NULL,
    status INTEGER, body TEXT, created INTEGER NOT NULL, PRIMARY KEY (scope, key)) WITHOUT ROWID;
"""


class SqliteStore(Store):
    def __init__(self, path):
        self.path = str(path)
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._all = []
        self._lock = threading.Lock()
        db = self._db()
        db.executescript(SCHEMA)

    def _db(self):
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")   # WAL: durable at each checkpoint, never corrupt
            self._local.db = db
            with self._lock:
                self._all.append(db)
        return db

    # -- telemetry

    def add_samples(self, station, ts_ms, samples):
        if not samples:
            return 0
        rows = sample_rows(station, ts_ms, samples)
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            before = db.total_changes
            db.executemany("INSERT OR IGNORE INTO samples VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
            new = db.total_changes - before
            if new:
                for r in rows:
                    self._session_step(db, station, r)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return new

    def _session_step(self, db, station, r):
        _, t, _, cp, _, soc, w, _, _, _, e_in, e_out, _, _ = r
        soc = soc if soc is not None and soc >= 0 else None
        cur = db.execute("SELECT start, last, soc_min, peak_dis_w FROM sessions WHERE station=? AND ended IS NULL "
                         "ORDER BY start DESC LIMIT 1", (station,)).fetchone()
        if cp in PLUGGED:
            if cur is None:
                db.execute("INSERT OR IGNORE INTO sessions VALUES (?,?,?,NULL,?,?,?,?,?,?,?,?)",
                           (station, t, t, e_in, e_out, e_in, e_out, soc, soc, soc, max(0, -(w or 0))))
            elif t >= cur[1]:
                soc_min = cur[2] if soc is None else (soc if cur[2] is None else min(cur[2], soc))
                db.execute("UPDATE sessions SET last=?, e_in1=?, e_out1=?, soc1=COALESCE(?, soc1), "
                           "soc0=COALESCE(soc0, ?), soc_min=?, peak_dis_w=? WHERE station=? AND start=?",
                           (t, e_in, e_out, soc, soc, soc_min, max(cur[3] or 0, -(w or 0)), station, cur[0]))
        elif cur is not None and t >= cur[1]:
            db.execute("UPDATE sessions SET ended=? WHERE station=? AND start=?", (t, station, cur[0]))

    def latest_sample(self, station):
        row = self._db().execute("SELECT t, doc FROM samples WHERE station=? ORDER BY t DESC LIMIT 1",
                                 (station,)).fetchone()
        return None if row is None else (row[0], json.loads(row[1]))

    def telemetry(self, station, t_from, t_to, points):
        q = ("SELECT (t - ?) / ? AS b, MIN(t), AVG(soc_pm), AVG(w), MIN(w), MAX(w), AVG(ma), AVG(mv), AVG(mhz), "
             "MAX(e_in_wh), MAX(e_out_wh), AVG(dis_cap_wh), COUNT(*) FROM samples "
             "WHERE station=? AND t>=? AND t<? GROUP BY b ORDER BY b")
        rows = self._db().execute(q, (t_from, slice_ms(t_from, t_to, points), station, t_from, t_to))
        return [telemetry_point(r[1:]) for r in rows]

    # -- events

    def add_event(self, station, ts_ms, event):
        db = self._db()
        cur = db.execute("INSERT OR IGNORE INTO events VALUES (?,?,?,?,?)",
                         (station, ts_ms, str(event.get("code")), 1 if event.get("on") else 0,
                          str(event.get("msg", ""))[:500]))
        return cur.rowcount == 1

    def events(self, station, t_from, t_to, limit):
        rows = self._db().execute('SELECT t, code, "on", msg FROM events WHERE station=? AND t>=? AND t<? '
                                  "ORDER BY t DESC LIMIT ?", (station, t_from, t_to, limit)).fetchall()
        return [{"t": t, "code": c, "on": bool(o), "msg": m} for t, c, o, m in rows]

    # -- sessions

    def sessions(self, station, limit):
        rows = self._db().execute("SELECT start, last, ended, e_in0, e_out0, e_in1, e_out1, soc0, soc1, soc_min, "
                                  "peak_dis_w FROM sessions WHERE station=? ORDER BY start DESC LIMIT ?",
                                  (station, limit)).fetchall()
        return [session_doc(r) for r in rows]

    # -- idempotency keys

    def idem_begin(self, scope, key, fingerprint, ttl_ms, stale_pending_ms):
        db = self._db()
        now = now_ms()
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT fp, state, status, body, created FROM idem WHERE scope=? AND key=?",
                             (scope, key)).fetchone()
            if row is not None:
                fp, state, status, body, created = row
                expired = created < now - ttl_ms
                abandoned = state == "pending" and created < now - stale_pending_ms
                if expired or abandoned:
                    db.execute("DELETE FROM idem WHERE scope=? AND key=?", (scope, key))
                    row = None
            if row is None:
                db.execute("INSERT INTO idem VALUES (?,?,?,'pending',NULL,NULL,?)", (scope, key, fingerprint, now))
                result = ("new", None)
            elif fp != fingerprint:
                result = ("mismatch", None)
            elif state == "pending":
                result = ("pending", None)
            else:
                result = ("done", (status, json.loads(body)))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return result

    def idem_finish(self, scope, key, status, body):
        self._db().execute("UPDATE idem SET state='done', status=?, body=? WHERE scope=? AND key=?",
                           (status, json.dumps(body, separators=(",", ":")), scope, key))

    def idem_forget(self, scope, key):
        self._db().execute("DELETE FROM idem WHERE scope=? AND key=?", (scope, key))

    def purge(self, idem_before_ms):
        self._db().execute("DELETE FROM idem WHERE created < ?", (idem_before_ms,))

    def close(self):
        with self._lock:
            for db in self._all:
                try:
                    db.close()
                except sqlite3.Error:
                    pass
            self._all.clear()
        self._local = threading.local()


# ---------------------------------------------------------------- shared by every engine
# (the SQLite store here, the fleet's PostgreSQL store in host_tools/history): rows in, documents out


def _doc_encoder():
    """json.dumps(o, separators=(",", ":")) for every sample's `doc`, without building an encoder
    per call: CPython's C encoder made once (a third of the cost), else one JSONEncoder."""
    enc = json.JSONEncoder(separators=(",", ":"))
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is not None:
        try:
            it = make(None, enc.default, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, True)
            probe = {"t_ms": 1, "cp": "C", "w": -7.5, "é": [None, True, float("nan")]}
            if "".join(it(probe, 0)) == enc.encode(probe):
                return lambda o: "".join(it(o, 0))
        except TypeError:            # another signature in another Python
            pass
    return enc.encode


_DOC = _doc_encoder()


def sample_rows(station, ts_ms, samples):
    """Rows of one telemetry batch, columns in SCHEMA's order: the batch's wall time is the
    bridge's `ts`; each sample is placed `t_ms` before the last one of its batch."""
    last = samples[-1].get("t_ms", 0)
    rows = []
    for s in samples:
        t = ts_ms - (last - s.get("t_ms", last))
        rows.append((station, t, s.get("t_ms"), s.get("cp"), s.get("mode"), s.get("soc_pm"), s.get("w"),
                     s.get("ma"), s.get("mv"), s.get("mhz"), s.get("e_in_wh"), s.get("e_out_wh"),
                     s.get("dis_cap_wh"), _DOC(s)))
    return rows


def slice_ms(t_from, t_to, points):
    """Width of each downsampled point: `points` equal slices of [t_from, t_to), at least 1 ms."""
    return max(1, -(-max(1, t_to - t_from) // max(1, points)))


def telemetry_point(r):
    """One downsampled point from (first t, avg soc_pm, avg w, min w, max w, avg ma, avg mv,
    avg mhz, max e_in_wh, max e_out_wh, avg dis_cap_wh, samples). Averages may come as
    Decimal (PostgreSQL's avg of integers): they are taken as float."""
    t, soc, w, wmin, wmax, ma, mv, mhz, e_in, e_out, cap, n = r
    soc = _f(soc)
    return {"t": t, "soc_pct": None if soc is None or soc < 0 else round(soc / 10, 1),
            "w": _r(_f(w)), "w_min": wmin, "w_max": wmax, "a": _r(_f(ma), 1000), "v": _r(_f(mv), 1000),
            "hz": _r(_f(mhz), 1000), "e_in_wh": e_in, "e_out_wh": e_out,
            "discharge_capacity_wh": _r(_f(cap)), "samples": n}


def session_doc(r):
    """A session's document from (start, last, ended, e_in0, e_out0, e_in1, e_out1, soc0,
    soc1, soc_min, peak_dis_w)."""
    start, last, ended, ei0, eo0, ei1, eo1, s0, s1, smin, peak = r
    return {"start": start, "end": ended, "last_seen": last, "energy_in_wh": _diff(ei1, ei0),
            "energy_out_wh": _diff(eo1, eo0), "soc_start_pct": _pct(s0), "soc_end_pct": _pct(s1),
            "soc_min_pct": _pct(smin), "peak_discharge_w": peak or 0}


def _f(v):
    return None if v is None else float(v)


def _r(v, div=1):
    return None if v is None else round(v / div, 3 if div > 1 else 0)


def _diff(a, b):
    return None if a is None or b is None else a - b


def _pct(pm):
    return None if pm is None else pm / 10


def open_store(url):
    """A store from `--store`: sqlite:///path/to/file.db (the default engine), a bare path, or
    postgresql://user@host:port/db (the fleet's sharded store, host_tools/history)."""
    u = urllib.parse.urlsplit(url)
    if u.scheme in ("", "sqlite"):
        path = (u.netloc + u.path) if u.scheme else url
        if not path:
            raise ValueError(f"--store {url!r}: no file named (sqlite:///var/lib/v2g/api.db)")
        return SqliteStore(path)
    if u.scheme in ("postgresql", "postgres"):
        from host_tools.history.pg import PgStore   # psycopg loads only for a fleet store
        return PgStore(url)
    raise ValueError(f"--store {url!r}: unknown engine {u.scheme!r} (sqlite:///PATH or postgresql://HOST/DB)")
