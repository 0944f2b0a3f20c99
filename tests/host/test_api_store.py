"""The history store's SQLite engine (host_tools/api/store.py): idempotent inserts, sessions
made from samples, downsampling, and the lifetime of Idempotency-Key records."""

import time

import pytest

from host_tools.api.store import SqliteStore, open_store


@pytest.fixture
def store(tmp_path):
    s = SqliteStore(tmp_path / "h.db")
    yield s
    s.close()


def _s(t_ms, cp="C", soc=500, w=3000, e_in=0, e_out=0):
    return {"t_ms": t_ms, "cp": cp, "mode": "x", "soc_pm": soc, "w": w, "ma": w * 4, "mv": 230000, "mhz": 50000,
            "e_in_wh": e_in, "e_out_wh": e_out, "dis_cap_wh": 1000, "errors": []}


def test_the_same_batch_twice_is_stored_once(store):
    batch = [_s(1000), _s(2000)]
    assert store.add_samples("CS-1", 10_000, batch) == 2
    assert store.add_samples("CS-1", 10_000, batch) == 0
    assert store.latest_sample("CS-1")[0] == 10_000
    assert store.add_event("CS-1", 5, {"code": "V2G-301", "on": True, "msg": "x"}) is True
    assert store.add_event("CS-1", 5, {"code": "V2G-301", "on": True, "msg": "x"}) is False


def test_a_session_from_plug_in_to_plug_out(store):
    store.add_samples("CS-1", 3000, [_s(1000, cp="A"), _s(2000, soc=600, e_out=10), _s(3000, soc=550, w=-7000,
                                                                                          e_out=25)])
    store.add_samples("CS-1", 5000, [_s(4000, soc=580, w=4000, e_in=5, e_out=25), _s(5000, cp="A", e_in=9)])
    (s,) = store.sessions("CS-1", 10)
    assert (s["start"], s["end"]) == (2000, 5000)
    assert (s["energy_in_wh"], s["energy_out_wh"]) == (5, 15)
    assert (s["soc_start_pct"], s["soc_end_pct"], s["soc_min_pct"], s["peak_discharge_w"]) == (60.0, 58.0, 55.0, 7000)


def test_downsampling_keeps_the_power_extremes(store):
    store.add_samples("CS-1", 10_000, [_s(1000 * i, w=100 * i) for i in range(10)])
    pts = store.telemetry("CS-1", 1000, 11_000, 2)
    assert [p["samples"] for p in pts] == [5, 5]
    assert (pts[0]["w_min"], pts[0]["w_max"], pts[1]["w_min"], pts[1]["w_max"]) == (0, 400, 500, 900)


def test_idempotency_records_expire_and_abandoned_reservations_are_taken_over(store):
    assert store.idem_begin("u", "k", "fp", ttl_ms=60_000, stale_pending_ms=60_000) == ("new", None)
    assert store.idem_begin("u", "k", "fp", ttl_ms=60_000, stale_pending_ms=60_000) == ("pending", None)
    assert store.idem_begin("u", "k", "fp", ttl_ms=60_000, stale_pending_ms=-1)[0] == "new"    # its worker died
    store.idem_finish("u", "k", 200, {"ok": True})
    assert store.idem_begin("u", "k", "fp", ttl_ms=60_000, stale_pending_ms=0) == ("done", (200, {"ok": True}))
    assert store.idem_begin("u", "k", "other", ttl_ms=60_000, stale_pending_ms=0) == ("mismatch", None)
    assert store.idem_begin("u", "k", "other", ttl_ms=-1, stale_pending_ms=0) == ("new", None)  # expired: new
    store.purge(int(time.time() * 1000) + 1)
    assert store.idem_begin("u", "k", "x", ttl_ms=60_000, stale_pending_ms=60_000) == ("new", None)


def test_store_urls(tmp_path):
    assert isinstance(open_store(f"sqlite:///{tmp_path}/a.db"), SqliteStore)
    with pytest.raises(ValueError, match="unknown engine 'mysql'"):
        open_store("mysql://db/v2g")
    with pytest.raises(ValueError, match="coordinator does not answer"):   # the fleet store, nothing there
        open_store(f"postgresql://v2g@127.0.0.1:{_closed_port()}/v2g")


def _closed_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
