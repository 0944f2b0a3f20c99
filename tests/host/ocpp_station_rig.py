"""The bridge's OCPP 2.0.1 station in this process, against the tests' CSMS (which checks every
station frame against the package's JSON schemas), with a controller that answers like the
real one, and a TCP relay between them that can drop traffic silently. Shared by the OCTT
conformance tests and the bench."""

import asyncio
import threading
import time

from ocpp_csms import Csms

from host_tools.bridge.backoff import Backoff
from host_tools.bridge.ocpp import OcppStation
from host_tools.link import CommandResult

STATION = "CS-OCTT-1"
# the controller's settings with their ranges (firmware/core/config.py)
SETTINGS = {"MAX_CHARGE_AMPS": (32, 6, 80), "MAX_DISCHARGE_AMPS": (16, 0, 80), "VENTILATION_AVAILABLE": (False, None, None)}


class Log:
    def __init__(self):
        self.lines = []

    def event(self, station, code, msg):
        self.lines.append((code, msg))

    def text(self):
        return "\n".join(f"{c} {m}" for c, m in self.lines)


class Controller:
    """The controller facade OcppStation uses: settings it checks itself, the CSMS plans it
    takes, a sample the test sets."""

    fw, serial, fota = "0.1.0", "sim-OCTT", None
    volts, phases = 230.0, 1

    def __init__(self):
        self.sample = {"cp": "A", "mode": "idle", "mv": 230000}
        self.values = {k: v[0] for k, v in SETTINGS.items()}
        self.plans = []
        self.commands = []

    @property
    def max_charge_a(self):
        return float(self.values["MAX_CHARGE_AMPS"])

    @property
    def max_discharge_a(self):
        return float(self.values["MAX_DISCHARGE_AMPS"])

    async def wait_ready(self, timeout):
        return None

    async def command(self, op, args):
        self.commands.append((op, args))
        if op == "config_get":
            return CommandResult("t", True, None, "ok", {"values": dict(self.values)})
        if op == "config_set":
            for k, v in args.items():
                _, lo, hi = SETTINGS[k]
                if lo is not None and not (isinstance(v, (int, float)) and lo <= v <= hi):
                    return CommandResult("t", False, "V2G-400", f"{k}: {v!r} outside {lo}..{hi}", {})
            self.values.update(args)
        return CommandResult("t", True, None, "ok", {})

    async def apply_csms_plan(self, plan):
        # the controller never goes beyond its own ceilings
        if plan is not None and plan.get("discharge_a") is not None:
            plan = dict(plan, discharge_a=min(plan["discharge_a"], self.max_discharge_a))
        self.plans.append(plan)
        return True, "ok"


class SilentProxy:
    """A TCP relay the test controls: `drop()` stops forwarding in both directions without
    closing anything (no FIN, no RST: a dead LTE-M link or a NAT that forgot the flow);
    `restore()` forwards again for new connections (the old ones are closed then)."""

    def __init__(self, target_port):
        self.target_port = target_port
        self.dropping = False
        self.pairs = []
        self.server = None
        self.port = None
        self.connections = 0

    async def start(self):
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, r, w):
        self.connections += 1
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            w.close()
            return
        pair = (w, uw)
        self.pairs.append(pair)
        await asyncio.gather(self._pump(r, uw), self._pump(ur, w), return_exceptions=True)

    async def _pump(self, r, w):
        while True:
            data = await r.read(65536)
            if not data:
                if not self.dropping:
                    w.close()
                return
            if not self.dropping:
                w.write(data)
                await w.drain()

    def drop(self):
        self.dropping = True

    def restore(self):
        self.dropping = False
        for a, b in self.pairs:
            a.close()
            b.close()
        self.pairs.clear()

    async def stop(self):
        self.server.close()
        for a, b in self.pairs:
            a.close()
            b.close()


class Rig:
    """The station runs on its own loop in a thread; tests drive the CSMS and `do` things on
    the station's loop."""

    def __init__(self, tmp_path, *, proxy=False, boot_status=(), heartbeat_s=60, **station_kw):
        self.csms = Csms(versions=("ocpp2.0.1",), heartbeat_s=heartbeat_s).start()
        self.csms.boot_status = list(boot_status)
        self.ctl = Controller()
        self.log = Log()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.proxy = None
        url = self.csms.url
        if proxy:
            self.proxy = SilentProxy(self.csms.port)
            self.do(self.proxy.start())
            url = f"ws://127.0.0.1:{self.proxy.port}/ocpp"
        kw = {"max_version": "2.0.1", "backoff": Backoff(0.2, 0.0, 2), "handshake_timeout_s": 2.0,
              "response_timeout": 10.0}
        kw.update(station_kw)

        async def make():
            return OcppStation(STATION, url, self.ctl, tmp_path / "ocpp", self.log, **kw)
        self.st = self.do(make())
        self.start()
        self.wait(lambda: self.st.connected.is_set(), 20, "the station's boot")

    def start(self):
        async def go():
            return asyncio.ensure_future(self.st.run())
        self.task = self.do(go())

    def do(self, coro, timeout=30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call_soon(self, fn, *args):
        async def go():
            return fn(*args)
        return self.do(go())

    def sample(self, **s):
        """A new controller sample, fed to the station as the service does."""
        self.ctl.sample = dict(self.ctl.sample, **s)
        self.call_soon(self.st.on_sample, self.ctl.sample, time.monotonic())

    @staticmethod
    def wait(fn, timeout=45, what="condition"):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            v = fn()
            if v:
                return v
            time.sleep(0.02)
        raise AssertionError(f"{what} not reached within {timeout} s")

    def request(self, payload):
        return self.csms.request(STATION, payload)

    def set_vars(self, *items):
        """SetVariables through the CSMS: (component, variable, value[, instance])."""
        from ocpp.v201 import call
        data = [{"component": {"name": c}, "variable": {"name": v, **({"instance": i[0]} if i else {})},
                 "attribute_value": str(val)} for c, v, val, *i in items]
        kind, res = self.request(call.SetVariables(set_variable_data=data))
        assert kind == "result", res
        return [r["attributeStatus"] for r in res["setVariableResult"]]

    def close(self):
        async def stop():
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        self.do(stop())
        if self.proxy is not None:
            self.do(self.proxy.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.csms.close()      # raises when a station frame broke its schema
        assert self.csms.frames > 0, "no station frame was checked against the schemas"
