"""`v2g secc`'s gateway process (host_tools/secc/gateway.py) without a controller or a worker."""

import asyncio

from host_tools.secc import gateway


class Done(Exception):
    pass


class DeadWorker:
    def wait(self):
        return 3

    def poll(self):
        return 3


def test_a_worker_that_resets_its_socket_is_restarted(tmp_path, monkeypatch):
    """A worker that ends with a snapshot of ours unread resets the socketpair: the gateway's
    read raises instead of seeing the end. It is still a dead worker to restart, not the
    end of `v2g secc` (which would leave the controller without its keep-alives)."""
    s = gateway.Secc("loop://", "lo", 8081, tls=False, pki_dir=tmp_path, log_dir=tmp_path)
    starts = []

    async def start_worker():
        starts.append(1)
        if len(starts) > 1:
            raise Done()
        s.proc = DeadWorker()
        reader = asyncio.StreamReader()
        reader.set_exception(ConnectionResetError(104, "Connection reset by peer"))
        return reader

    async def no_wait(_):
        return None

    monkeypatch.setattr(s, "start_worker", start_worker)
    monkeypatch.setattr(gateway.asyncio, "sleep", no_wait)

    async def run():
        try:
            await s.worker_loop()
        except Done:
            return "restarted"
    assert asyncio.run(run()) == "restarted"
    assert len(starts) == 2
    assert "SECC process ended (exit 3)" in (tmp_path / gateway.LOG_NAME).read_text()


def test_the_controllers_departure_count_is_the_workers_departure_s():
    st = {"soc_pm": 500, "target_pm": 800, "floor_pm": 200, "departure_s": 3599}
    snap = gateway.snapshot(st, {}, 1)
    assert snap["departure_s"] == 3599 and snap["target_soc"] == 80 and snap["min_soc"] == 20
    for none in (None, 0, True, "3599"):       # none held, or not a count of seconds
        assert gateway.snapshot(dict(st, departure_s=none), {}, 1)["departure_s"] is None
    assert gateway.snapshot({k: v for k, v in st.items() if k != "departure_s"}, {}, 1)["departure_s"] is None
