"""`v2g secc`: the gateway side of the ISO 15118-20 SECC (docs/secc.md).

    controller <-host link-> this process <-socketpair, JSON lines-> SECC worker (.venv-15118)

This process owns the controller link (LinkClient: the controller's serial port, or the
bridge's local link), polls the controller's `status` every POLL_S and hands the worker the
present limits; the worker answers the vehicle from them. It drives the `hlc` command: on at
plug-in (pilot 5 %), repeated every KEEPALIVE_S while the session is set up or runs, off at
its end, off with `failed` when it fails or does not start within the setup timeout (the
controller then raises V2G-150: nominal duty, charge only). If this process dies, the
keep-alive stops and the controller does the same on its own after HLC_TIMEOUT_MS.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from host_tools.link import LinkClient, LinkError
from host_tools.secc import proto

WORKER = Path(__file__).with_name("worker.py")
VENV = Path(__file__).resolve().parents[2] / ".venv-15118"
LOG_NAME = "central_system.log"
EVENTS_NAME = "secc_events.jsonl"


def worker_python():
    """The ISO 15118 venv's interpreter: $V2G_15118_PYTHON, else the repository's .venv-15118."""
    p = os.environ.get("V2G_15118_PYTHON") or str(VENV / "bin" / "python")
    if not Path(p).exists():
        raise FileNotFoundError(f"{p}: the ISO 15118 venv is missing; run `make venv-15118`")
    return p


class CentralLog:
    """central_system.log, the bridge's format: `time code station message`."""

    def __init__(self, log_dir, station):
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        self._f = open(Path(log_dir) / LOG_NAME, "a", encoding="utf-8", buffering=1)
        self.station = station

    def event(self, code, msg):
        ts = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        line = f"{ts} {code or 'INFO'} {self.station} {msg}".replace("\n", " ")
        self._f.write(line + "\n")
        print(line, file=sys.stderr, flush=True)


def snapshot(st: dict, tel: dict, seq: int) -> dict:
    """The worker's EVSE view from the controller's status (and the last telemetry sample)."""
    soc = st.get("soc_pm", -1)
    target = st.get("target_pm", -1)
    floor = st.get("floor_pm", -1)
    mv = tel.get("mv")
    # MinimumSOC is a whole percent: rounded up, so the vehicle's minimum is never below the floor
    min_soc = -(-floor // 10) if floor is not None and floor >= 0 else None
    target_soc = round(target / 10) if target is not None and target >= 0 else None
    if target_soc is not None and min_soc is not None and target_soc < min_soc:
        target_soc = min_soc          # discharge stops at the floor: the vehicle's target says so
    # the driver's departure as the controller counts it down (whole seconds, null: none); a
    # new snapshot goes to the worker as it changes, so the vehicle's DepartureTime is its
    # count to within a status poll and the worker's answer
    dep = st.get("departure_s")
    departure_s = dep if isinstance(dep, int) and not isinstance(dep, bool) and dep > 0 else None
    return {
        "t": "evse", "seq": seq,
        "chg_a": max(0, st.get("limit_charge_ma", 0)) / 1000,
        "dis_a": max(0, st.get("limit_discharge_ma", 0)) / 1000,
        "req_a": st.get("request_ma", 0) / 1000,
        "volts": (mv / 1000) if mv else 230.0,
        "amps": tel.get("ma", st.get("request_ma", 0)) / 1000,
        "soc": soc / 10 if soc is not None and soc >= 0 else None,
        "target_soc": target_soc, "min_soc": min_soc, "departure_s": departure_s,
        "cp": st.get("cp_state"), "contactor": st.get("contactor"), "mode": st.get("mode"),
        "stop": bool(st.get("stopped") or st.get("hlc_failed") or st.get("mode") == "fault"),
        "limited": bool(st.get("limit_charge_src") not in (None, "station", "cable")),
        "src": [st.get("limit_charge_src"), st.get("limit_discharge_src")],
    }


class Secc:
    IDLE, WAIT, SESSION, DONE, FAILED = "idle", "wait", "session", "done", "failed"

    def __init__(self, link, iface, port, *, tls, pki_dir, log_dir, station="-",
                 setup_timeout=20.0, evse_id="DE*V2G*E1"):
        self.link_url = link
        self.iface = iface
        self.port = port
        self.tls = tls
        self.pki_dir = pki_dir
        self.log_dir = Path(log_dir)
        self.clog = CentralLog(log_dir, station)
        self.events = open(self.log_dir / EVENTS_NAME, "a", encoding="utf-8", buffering=1)
        self.setup_timeout = setup_timeout
        self.evse_id = evse_id
        self.lk: LinkClient | None = None
        self.tel: dict = {}
        self.st: dict = {}
        self.seq = 0
        self.phase = self.IDLE
        self.t_on = 0.0
        self.ev_soc = None
        self.proc = None
        self.writer = None
        self.ready = asyncio.Event()

    def record(self, kind, **kw):
        self.events.write(json.dumps({"wall": time.time(), "kind": kind, **kw}) + "\n")

    async def cmd(self, op, args=None):
        return await asyncio.to_thread(self.lk.command, op, args or {}, timeout=2.0)

    # -- the worker process
    async def start_worker(self):
        ours, theirs = socket.socketpair()
        errlog = open(self.log_dir / "secc_worker.log", "ab")
        argv = [worker_python(), str(WORKER), "--fd", str(theirs.fileno()), "--iface", self.iface,
                "--port", str(self.port), "--evse-id", self.evse_id]
        if self.tls:
            argv += ["--tls", "--pki", str(self.pki_dir)]
        self.proc = subprocess.Popen(argv, pass_fds=[theirs.fileno()], stdout=errlog, stderr=errlog)
        theirs.close()
        reader, self.writer = await asyncio.open_connection(sock=ours)
        return reader

    async def worker_loop(self):
        while True:
            reader = await self.start_worker()
            while True:
                try:
                    line = await reader.readline()
                except (ConnectionError, OSError):
                    # a worker that ends with our last snapshot unread resets the socket
                    line = b""
                if not line:
                    break
                msg = proto.loads(line)
                if msg is not None:
                    await self.on_worker(msg)
            self.ready.clear()
            code = await asyncio.to_thread(self.proc.wait)
            self.clog.event(None, f"SECC process ended (exit {code}): ISO 15118 unavailable; restarting it")
            self.record("worker_died", code=code)
            if self.phase in (self.WAIT, self.SESSION):
                await self.fail("SECC process died")
            await asyncio.sleep(1.0)

    async def on_worker(self, msg):
        t = msg["t"]
        self.record("worker", **msg)
        if t == "ready":
            self.clog.event(None, f"SECC up on {self.iface} port {self.port} ({'TLS 1.3' if self.tls else 'no TLS'}); "
                            f"EXI codec started in {msg.get('codec_ms')} ms, warmed up in {msg.get('warm_ms')} ms")
            if msg.get("codec_fallback"):
                self.clog.event(None, "EXI codec: the package's stock one, slower per message, because "
                                f"{msg['codec_fallback']}")
            if self.port < 49152:
                self.clog.event(None, f"SECC port {self.port} is below the dynamic range 49152-65535 that "
                                "ISO 15118 names for it: a strict vehicle may refuse it")
            self.ready.set()
            await self.push()
        elif t == "state":
            if self.phase == self.WAIT:
                self.phase = self.SESSION
        elif t == "ev":
            if msg.get("soc") is not None:
                self.ev_soc = msg["soc"]
        elif t == "handshake_failed":
            self.clog.event("V2G-140", f"ERR_V2G_HANDSHAKE_TIMEOUT ISO 15118 TLS handshake with {msg.get('peer')} "
                            f"failed: {msg.get('why')}")
        elif t == "ended":
            if msg.get("ok"):
                self.clog.event(None, f"ISO 15118 session ended ({msg.get('state')}: {msg.get('reason')})")
                self.phase = self.DONE
                await self.cmd("hlc", {"on": False})
            elif self.phase in (self.WAIT, self.SESSION):
                await self.fail(f"ISO 15118 session failed in {msg.get('state')}: {msg.get('reason')}")

    async def fail(self, why):
        why = why[:120]
        self.phase = self.FAILED
        self.clog.event("V2G-150", f"{why}: back to basic charging, charge only")
        try:
            await self.cmd("hlc", {"on": False, "failed": why})
        except LinkError as e:
            self.clog.event(None, f"hlc off not acknowledged ({e}); the controller times out on its own")

    async def push(self):
        if self.writer is None or not self.st:
            return
        self.seq += 1
        snap = snapshot(self.st, self.tel, self.seq)
        self.writer.write(proto.dumps(snap))
        self.record("evse", seq=self.seq, chg_a=snap["chg_a"], dis_a=snap["dis_a"], req_a=snap["req_a"],
                    min_soc=snap["min_soc"], target_soc=snap["target_soc"], departure_s=snap["departure_s"],
                    stop=snap["stop"], src=snap["src"],
                    soc=snap["soc"], mode=snap["mode"], cp=snap["cp"])

    # -- the controller
    async def poll_loop(self):
        last = None
        last_keep = 0.0
        while True:
            try:
                res = await self.cmd("status")
                if res:
                    self.st = res.data
            except LinkError:
                pass
            key = json.dumps(snapshot(self.st, self.tel, 0), sort_keys=True) if self.st else None
            if key != last:
                last = key
                await self.push()
            await self.drive_hlc()
            now = time.monotonic()
            if self.phase in (self.WAIT, self.SESSION) and now - last_keep >= proto.KEEPALIVE_S:
                last_keep = now
                args = {"on": True}
                if self.ev_soc is not None:
                    args["soc_pct"] = max(0, min(100, self.ev_soc))
                try:
                    r = await self.cmd("hlc", args)
                    if not r:
                        await self.fail(f"controller refused hlc: {r.code} {r.msg}")
                except LinkError:
                    pass
            await asyncio.sleep(proto.POLL_S)

    async def drive_hlc(self):
        cp = self.st.get("cp_state")
        if cp in (None, "A"):
            if self.phase != self.IDLE:
                self.record("unplugged", phase=self.phase)
            self.phase = self.IDLE
            self.ev_soc = None
            return
        if self.phase == self.IDLE and self.ready.is_set() and cp in ("B", "C", "D") \
                and not self.st.get("hlc_failed"):
            r = await self.cmd("hlc", {"on": True})
            if r:
                self.phase = self.WAIT
                self.t_on = time.monotonic()
                self.clog.event(None, "vehicle plugged in: pilot to 5 %, waiting for ISO 15118")
        elif self.phase == self.WAIT and time.monotonic() - self.t_on > self.setup_timeout:
            await self.fail(f"no ISO 15118 session within {self.setup_timeout:g} s")

    async def run(self):
        self.lk = LinkClient(self.link_url, on_tel=self._on_tel)
        self.lk.open()
        try:
            await asyncio.gather(self.worker_loop(), self.poll_loop())
        finally:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.terminate()
            self.lk.close()

    def _on_tel(self, msg):
        for s in msg.get("samples", []):
            self.tel = s
