"""Site gateway: one `v2g bridge` process serving many controllers.

What is measured: the time from a CSMS sending SetChargingProfile to the `limit`
command frame arriving on that controller's host link, and how many such profiles
per second one bridge process turns into link frames; and, for one station behind a link
that goes silent (no FIN, no RST), the time to notice it and to deliver the TransactionEvent
produced meanwhile (`reconnect`).

Set-up, all on loopback:
- the bridge runs as its own process (`python -m host_tools.commands.bridge --site ...`);
- the CSMS (the `ocpp` package) and the controllers run in this process. The controllers
  are lightweight in-process link endpoints built on the firmware's own framing
  (firmware/core/link.py): they answer hello, heartbeat and commands, nothing else.
  1,000 MicroPython VMs would not fit this machine; the bridge cannot tell the difference
  on the wire.
- paced run: profiles sent round-robin at a fixed rate (latency p50/p99); the goal
  row (p99 < 100 ms at 1,000 controllers) holds at this load, 100 profiles/s;
  burst run: one profile to every station at once (messages per second, p99), no goal.
- OCPP 1.6J beside 2.0.1: the same paced run at 1,000 controllers with a CSMS that speaks
  only 1.6 (`--ocpp 1.6`, SetChargingProfile with a TxDefaultProfile), one row each for p50
  and p99 next to the 2.0.1 rows.

Left out: MQTT (no broker, no app channel), TLS towards the CSMS (ws://, profile 0),
the MicroPython VM and its serial link, and the controllers' telemetry traffic, which
on a real site shares the bridge's loop with these frames.
"""

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import websockets
from ocpp import v16, v201
from ocpp.routing import on
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v201 import call, call_result

from host_tools import vm

vm.firmware_sys_path("sim")

from core import link as FL  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GOAL_P99_MS = 100.0


class FakeController:
    """One controller's host link: a TCP endpoint the bridge opens as socket://."""

    def __init__(self, index, arrivals):
        self.index = index
        self.arrivals = arrivals      # station id -> list of (monotonic time, args)
        self.station = f"BENCH-{index:04d}"
        self.server = None
        self.port = None
        self.waiter = None      # future the bench awaits for the next limit frame

    async def start(self):
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader, writer):
        out = []
        link = FL.Link(lambda buf: out.append(bytes(buf)))   # the buffer is reused: copy it
        while True:
            try:
                data = await reader.read(4096)
            except (ConnectionError, asyncio.CancelledError):
                break
            if not data:
                break
            for msg in link.feed(data):
                t = msg["t"]
                if t == "cmd":
                    if msg["op"] == "limit":
                        self.arrivals.setdefault(self.station, []).append((time.monotonic(), msg["args"]))
                        w = self.waiter
                        if w is not None and not w.done():
                            w.set_result(None)
                    data_ = {"values": {}} if msg["op"] == "config_get" else {}
                    link.send(FL.res(msg["txn"], True, None, "ok", data_))
                elif t == "hb":
                    link.send(FL.hback(msg))
                elif FL.is_hello_request(msg):
                    link.send(FL.hello("0.1.0-bench", "bench", "0" * 16, "power_on", 1))
            if out:
                writer.write(b"".join(out))
                out.clear()
                await writer.drain()
        writer.close()


class _CP(v201.ChargePoint):
    @on("BootNotification")
    def boot(self, **kw):
        return call_result.BootNotification(current_time=_now(), interval=300, status="Accepted")

    @on("Heartbeat")
    def hb(self, **kw):
        return call_result.Heartbeat(current_time=_now())

    @on("StatusNotification")
    def status(self, **kw):
        return call_result.StatusNotification()

    @on("TransactionEvent")
    def tx(self, **kw):
        return call_result.TransactionEvent()

    @on("SecurityEventNotification")
    def security_event(self, **kw):
        return call_result.SecurityEventNotification()


class _CP16(v16.ChargePoint):
    @on("BootNotification")
    def boot(self, **kw):
        return result16.BootNotification(current_time=_now(), interval=300, status="Accepted")

    @on("Heartbeat")
    def hb(self, **kw):
        return result16.Heartbeat(current_time=_now())

    @on("StatusNotification")
    def status(self, **kw):
        return result16.StatusNotification()


def _now():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _profile16(pid, amps):
    return call16.SetChargingProfile(connector_id=1, cs_charging_profiles={
        "charging_profile_id": pid, "stack_level": 0, "charging_profile_purpose": "TxDefaultProfile",
        "charging_profile_kind": "Relative",
        "charging_schedule": {"charging_rate_unit": "A",
                              "charging_schedule_period": [{"start_period": 0, "limit": amps}]}})


def _profile(pid, amps):
    return call.SetChargingProfile(evse_id=1, charging_profile={
        "id": pid, "stack_level": 0, "charging_profile_purpose": "TxDefaultProfile",
        "charging_profile_kind": "Relative",
        "charging_schedule": [{"id": 1, "charging_rate_unit": "A",
                               "charging_schedule_period": [{"start_period": 0, "limit": amps}]}]})


def _pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


async def _run(n, rate, duration_s, workdir, version="2.0.1"):
    arrivals = {}
    ctls = [FakeController(i, arrivals) for i in range(n)]
    for c in ctls:
        await c.start()
    stations = {}

    async def handler(ws):
        cp = (_CP16 if version == "1.6" else _CP)(ws.request.path.rsplit("/", 1)[-1], ws, response_timeout=60)
        stations[cp.id] = cp
        try:
            await cp.start()
        except websockets.exceptions.ConnectionClosed:
            pass

    server = await websockets.serve(handler, "127.0.0.1", 0, subprotocols=["ocpp" + version], ping_interval=None,
                                    max_queue=None)
    url = "ws://127.0.0.1:{}/ocpp".format(server.sockets[0].getsockname()[1])
    site = workdir / "site.json"
    site.write_text(json.dumps([{"station_id": c.station, "link": f"socket://127.0.0.1:{c.port}"} for c in ctls]))
    cfg = workdir / "etc"
    cfg.mkdir(mode=0o750, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "host_tools.commands.bridge", "--site", str(site), "--csms", url,
                             "--config-dir", str(cfg), "--log-dir", str(workdir / "log"),
                             "--state-dir", str(workdir / "state"), "--ocpp", version,
                             "--retry-backoff", "0.5,2,2"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=open(workdir / "bridge.stderr", "w"))
    try:
        end = time.monotonic() + 60 + n * 0.05
        while len(stations) < n and time.monotonic() < end:
            await asyncio.sleep(0.2)
        if len(stations) < n:
            raise RuntimeError(f"only {len(stations)} of {n} stations connected")
        await asyncio.sleep(2 + n / 500)     # boots, status notifications settle
        ids = sorted(stations)

        by_id = {c.station: c for c in ctls}

        async def one(st, amps):
            ctl = by_id[st]
            before = len(arrivals.get(st, []))
            ctl.waiter = asyncio.get_running_loop().create_future()
            t0 = time.monotonic()
            await stations[st].call((_profile16 if version == "1.6" else _profile)(1, amps))
            # the frame usually arrived before the answer; wait for it if not
            if len(arrivals.get(st, [])) <= before:
                try:
                    await asyncio.wait_for(ctl.waiter, 5)
                except asyncio.TimeoutError:
                    return None
            return arrivals[st][before][0] - t0

        # paced: `rate` profiles a second, round-robin, each with a new limit so a frame goes out
        tasks = []
        t_start = time.monotonic()
        total = int(rate * duration_s)
        for i in range(total):
            st = ids[i % n]
            k = i // n     # how many this station had: alternate its limit so every profile changes it
            tasks.append(asyncio.ensure_future(one(st, 6.0 + (k % 2))))
            nxt = t_start + (i + 1) / rate
            await asyncio.sleep(max(0.0, nxt - time.monotonic()))
        res = await asyncio.gather(*tasks)
        lat = [r * 1000 for r in res if r is not None]
        lost = sum(1 for r in res if r is None)
        # burst: one profile to every station at once
        t0 = time.monotonic()
        res = await asyncio.gather(*(one(st, 30.0 + (i % 7)) for i, st in enumerate(ids)))
        burst_s = time.monotonic() - t0
        burst_ok = sum(1 for r in res if r is not None)
        return {"lat": lat, "lost": lost, "burst_rate": burst_ok / burst_s, "burst_p99": _pct(
            [r * 1000 for r in res if r is not None], 99), "sent": total}
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        server.close()
        for c in ctls:
            c.server.close()


def measure(n, rate, duration_s=10.0, version="2.0.1"):
    work = Path(tempfile.mkdtemp(prefix="v2g-bridge-bench-"))
    try:
        _raise_fd_limit(8 * n + 256)
        return asyncio.run(_run(n, rate, duration_s, work, version))
    finally:
        err = (work / "bridge.stderr")
        if err.exists() and err.stat().st_size:
            sys.stderr.write(err.read_text()[-3000:])
        if not os.environ.get("V2G_BENCH_KEEP"):
            shutil.rmtree(work, ignore_errors=True)


def _raise_fd_limit(want):
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    except (ImportError, ValueError, OSError):
        pass


def reconnect(ping_s, drops=4, backoff_s=1):
    """One in-process OCPP 2.0.1 station (the bridge's own code) behind a TCP relay that stops
    forwarding without closing (tests/host/ocpp_station_rig.py). Per drop, from the moment
    the relay goes silent, with a TransactionEvent produced right after: when the keepalive
    declares the link dead, and when that event reaches the CSMS over the new connection (the
    relay forwards again as soon as the drop is noticed). RetryBackOffWaitMinimum `backoff_s`,
    RetryBackOffRandomRange 0."""
    sys.path.insert(0, str(ROOT / "tests" / "host"))
    from ocpp_station_rig import Rig
    detect, replay = [], []
    with tempfile.TemporaryDirectory() as tmp:
        r = Rig(Path(tmp), proxy=True)
        try:
            assert r.set_vars(("OCPPCommCtrlr", "WebSocketPingInterval", ping_s),
                              ("OCPPCommCtrlr", "RetryBackOffWaitMinimum", backoff_s),
                              ("OCPPCommCtrlr", "RetryBackOffRandomRange", 0)) == ["Accepted"] * 3
            r.sample(cp="C", mode="charging")
            for i in range(drops):
                r.wait(lambda: len(r.st.transactions.queue) == 0, 30, "the queue drained")
                dead = r.st.dead_links
                mark = r.csms.mark()
                t0 = time.monotonic()
                r.proxy.drop()
                r.sample(mode="paused" if i % 2 == 0 else "charging")
                r.wait(lambda d=dead: r.st.dead_links > d, 30, "the drop noticed")
                detect.append(r.st.dead_link_at - t0)
                r.proxy.restore()
                r.csms.wait_for("TransactionEvent", after=mark, timeout=60)
                with r.csms._cond:
                    t1 = next(t for _, a, _, t in r.csms.received[mark:] if a == "TransactionEvent")
                replay.append(t1 - t0)
        finally:
            r.close()
    return detect, replay


def reconnect_rows():
    out = []
    for ping_s in (1, 5):
        detect, replay = reconnect(ping_s, drops=4 if ping_s == 1 else 3)
        bound = ping_s + min(ping_s, 10)     # interval + pong timeout (PONG_TIMEOUT_MAX_S)
        tag = f"WebSocketPingInterval {ping_s} s, {len(detect)} silent drops"
        out.append((f"silent drop -> dead link detected, max, {tag}", round(max(detect), 2), "s",
                    f"<= {bound} s (interval + pong timeout)", max(detect) <= bound + 0.2))
        out.append((f"silent drop -> dead link detected, median, {tag}", round(_pct(detect, 50), 2), "s", "", None))
        out.append((f"silent drop -> first replayed TransactionEvent at the CSMS, max, {tag}, back-off 1 s",
                    round(max(replay), 2), "s", "informational", None))
    return out


def rows():
    """Two loads per size. Paced: `rate` profiles a second spread round-robin over the
    stations (at 1,000 stations each one gets a profile every 10 s): a CSMS adjusting a site
    bit by bit. The issue's goal (p99 < 100 ms at 1,000) is judged at that load. Burst: one
    profile to every station at the same instant (a site-wide curtailment): reported, no goal,
    since the last of 1,000 frames waits behind the other 999 by design of one process."""
    out = []
    for n, rate in ((100, 50), (1000, 100)):
        r = measure(n, rate)
        p50, p99 = _pct(r["lat"], 50), _pct(r["lat"], 99)
        tag = f"{n} fake controllers, paced {rate} profiles/s round-robin"
        goal = f"< {GOAL_P99_MS:g} ms at {rate}/s paced, none lost" if n == 1000 else ""
        out.append((f"SetChargingProfile -> link frame p50, {tag}", round(p50, 1), "ms", "", None))
        out.append((f"SetChargingProfile -> link frame p99, {tag}", round(p99, 1), "ms", goal,
                    (p99 < GOAL_P99_MS and r["lost"] == 0) if n == 1000 else None))
        out.append((f"burst: profiles turned into link frames per s, {n} controllers all at once",
                    round(r["burst_rate"]), "msg/s", "informational", None))
        out.append((f"burst: SetChargingProfile -> link frame p99, {n} controllers all at once",
                    round(r["burst_p99"], 1), "ms", "informational (no goal)", None))
        if n == 1000:
            out += rows_16(n, rate)
    return out + reconnect_rows()


def rows_16(n=1000, rate=100):
    """OCPP 1.6J next to the 2.0.1 rows: same gateway, same load, a 1.6-only CSMS."""
    r = measure(n, rate, version="1.6")
    tag = f"OCPP 1.6J, {n} fake controllers, paced {rate} profiles/s round-robin"
    return [(f"SetChargingProfile -> link frame p50, {tag}", round(_pct(r["lat"], 50), 1), "ms", "", None),
            (f"SetChargingProfile -> link frame p99, {tag}", round(_pct(r["lat"], 99), 1), "ms",
             f"< {GOAL_P99_MS:g} ms at {rate}/s paced, none lost (as 2.0.1)",
             _pct(r["lat"], 99) < GOAL_P99_MS and r["lost"] == 0)]


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    for row in rows():
        print(row)
