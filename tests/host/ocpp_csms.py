"""A small CSMS for the bridge tests and the bench, written with the `ocpp` package.

It runs its own asyncio loop in a thread so that plain (synchronous) pytest tests can
drive it: `csms.request(station, call.X(...))` sends a CALL and returns the answer,
`csms.wait_for(action, match)` waits for a message from a station. Everything the
stations send is recorded in `csms.received` as (station, action, payload camelCase).
"""

import asyncio
import base64
import threading
import time

import websockets
from ocpp import v21, v201
from ocpp.messages import Call, MessageType
from ocpp.routing import on

from host_tools.bridge.ocpp.connection import to_payload

ACTIONS = ("BootNotification", "Heartbeat", "StatusNotification", "TransactionEvent", "MeterValues",
           "NotifyReport", "LogStatusNotification", "FirmwareStatusNotification")


def _now():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class _Handlers:
    """Answers to what a station sends; records every message."""

    csms = None

    def _rec(self, action, kw):
        self.csms._record(self.id, action, kw)

    @on("BootNotification")
    def on_boot(self, **kw):
        self._rec("BootNotification", kw)
        return self._call_result.BootNotification(current_time=_now(), interval=self.csms.heartbeat_s,
                                                  status="Accepted")

    @on("Heartbeat")
    def on_hb(self, **kw):
        self._rec("Heartbeat", kw)
        return self._call_result.Heartbeat(current_time=_now())

    @on("StatusNotification")
    def on_status(self, **kw):
        self._rec("StatusNotification", kw)
        return self._call_result.StatusNotification()

    @on("TransactionEvent")
    def on_tx(self, **kw):
        self._rec("TransactionEvent", kw)
        return self._call_result.TransactionEvent()

    @on("MeterValues")
    def on_mv(self, **kw):
        self._rec("MeterValues", kw)
        return self._call_result.MeterValues()

    @on("NotifyReport")
    def on_report(self, **kw):
        self._rec("NotifyReport", kw)
        return self._call_result.NotifyReport()

    @on("LogStatusNotification")
    def on_log(self, **kw):
        self._rec("LogStatusNotification", kw)
        return self._call_result.LogStatusNotification()

    @on("FirmwareStatusNotification")
    def on_fw(self, **kw):
        self._rec("FirmwareStatusNotification", kw)
        return self._call_result.FirmwareStatusNotification()

    async def call_fixed(self, payload, action=None):
        """Send a CALL with per-phase keys spelt as the schema wants (the package's own
        call() spells dischargeLimit_L2 as dischargeLimitL2). Returns the raw answer."""
        msg = Call(unique_id=str(self._unique_id_generator()), action=action or type(payload).__name__,
                   payload=to_payload(payload))
        async with self._call_lock:
            await self._send(msg.to_json())
            res = await self._get_specific_response(msg.unique_id, self._response_timeout)
        return res


class CP201(_Handlers, v201.ChargePoint):
    pass


class CP21(_Handlers, v21.ChargePoint):
    pass


class Csms:
    def __init__(self, *, versions=("ocpp2.1", "ocpp2.0.1"), heartbeat_s=2, password=None, ssl=None,
                 host="127.0.0.1", port=0):
        self.versions = list(versions)
        self.heartbeat_s = heartbeat_s
        self.password = password
        self.ssl = ssl
        self.host = host
        self.port = port
        self.received = []
        self.stations = {}
        self.auth_failures = 0
        self.recv_hooks = []
        self._cond = threading.Condition()
        self.loop = asyncio.new_event_loop()
        self._server = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    # -- lifecycle

    def start(self):
        self.run(self._start())
        return self

    async def _start(self):
        self._server = await websockets.serve(self._handler, self.host, self.port, subprotocols=self.versions,
                                              process_request=self._check_auth, ssl=self.ssl,
                                              ping_interval=None)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def url(self):
        return "{}://{}:{}/ocpp".format("wss" if self.ssl else "ws", self.host, self.port)

    def stop(self):
        """Close the server and every connection (the CSMS goes away)."""
        async def _stop():
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()
                self._server = None
            self.stations.clear()
        self.run(_stop())

    def close(self):
        try:
            self.stop()
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)

    def run(self, coro, timeout=30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    # -- server side

    def _check_auth(self, conn, request):
        if self.password is None:
            return None
        want = "Basic " + base64.b64encode("{}:{}".format(request.path.rsplit("/", 1)[-1],
                                                          self.password).encode()).decode()
        if request.headers.get("Authorization") != want:
            self.auth_failures += 1
            return conn.respond(401, "bad credentials\n")
        return None

    async def _handler(self, ws):
        station = ws.request.path.rsplit("/", 1)[-1]
        cls = CP21 if ws.subprotocol == "ocpp2.1" else CP201
        cp = cls(station, ws, response_timeout=15)
        cp.csms = self
        cp.version = ws.subprotocol
        self.stations[station] = cp
        try:
            await cp.start()
        except websockets.exceptions.ConnectionClosed:
            pass
        finally:
            if self.stations.get(station) is cp:
                del self.stations[station]

    def _record(self, station, action, kw):
        with self._cond:
            self.received.append((station, action, kw, time.monotonic()))
            self._cond.notify_all()
        for hook in self.recv_hooks:
            hook(station, action, kw)

    # -- test side

    def wait_station(self, station, timeout=20):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if station in self.stations:
                return self.stations[station]
            time.sleep(0.05)
        raise AssertionError("station {} did not connect within {} s".format(station, timeout))

    def wait_for(self, action, match=None, timeout=15, after=0):
        """The first (station, action, payload) with index >= after that matches."""
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                for i, (_st, act, kw, _t) in enumerate(self.received):
                    if i >= after and act == action and (match is None or match(kw)):
                        return kw
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError("no {} within {} s; got {}".format(
                        action, timeout, [a for _, a, _, _ in self.received[after:]]))
                self._cond.wait(left)

    def messages(self, action, after=0):
        with self._cond:
            return [kw for i, (_, a, kw, _) in enumerate(self.received) if a == action and i >= after]

    def mark(self):
        with self._cond:
            return len(self.received)

    def request(self, station, payload, timeout=15):
        """Send a CALL (a dataclass of ocpp.v201/v21.call); returns (kind, payload):
        kind 'result' or the CALLERROR code."""
        cp = self.wait_station(station)

        async def go():
            res = await cp.call_fixed(payload)
            if res.message_type_id == MessageType.CallError:
                return res.error_code, res.error_description
            return "result", res.payload
        return self.run(go(), timeout)

    def request_raw(self, station, action, payload, timeout=15):
        cp = self.wait_station(station)

        async def go():
            res = await cp.call_fixed(payload, action=action)
            if res.message_type_id == MessageType.CallError:
                return res.error_code, res.error_description
            return "result", res.payload
        return self.run(go(), timeout)
