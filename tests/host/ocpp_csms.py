"""A small CSMS for the bridge tests and the bench, written with the `ocpp` package.

It runs its own asyncio loop in a thread so that plain (synchronous) pytest tests can
drive it: `csms.request(station, call.X(...))` sends a CALL and returns the answer,
`csms.wait_for(action, match)` waits for a message from a station. Everything the
stations send is recorded in `csms.received` as (station, action, payload camelCase).
"""

import asyncio
import base64
import json
import threading
import time
from datetime import datetime
from pathlib import Path

import jsonschema
import ocpp
import websockets
from ocpp import v21, v201
from ocpp.exceptions import InternalError
from ocpp.messages import Call, MessageType
from ocpp.routing import on

from host_tools.bridge.ocpp.connection import to_payload

ACTIONS = ("BootNotification", "Heartbeat", "StatusNotification", "TransactionEvent", "MeterValues",
           "NotifyReport", "LogStatusNotification", "FirmwareStatusNotification", "SecurityEventNotification")
# OCPP-J 2.0.1 Part 4 §4.3 (and 2.1): the error codes a CALLERROR may carry
ERROR_CODES = ("FormatViolation", "GenericError", "InternalError", "MessageTypeNotSupported", "NotImplemented",
               "NotSupported", "OccurrenceConstraintViolation", "PropertyConstraintViolation", "ProtocolError",
               "RpcFrameworkError", "SecurityError", "TypeConstraintViolation")
_SCHEMA_DIRS = {"ocpp2.0.1": Path(ocpp.__file__).parent / "v201" / "schemas",
                "ocpp2.1": Path(ocpp.__file__).parent / "v21" / "schemas"}
_schema_validators = {}
_FORMATS = jsonschema.FormatChecker(formats=())


@_FORMATS.checks("date-time", raises=ValueError)
def _rfc3339(value):
    # RFC 3339: a date, "T", a time and an offset (Z or +hh:mm); Python reads the rest
    if isinstance(value, str):
        if len(value) < 20 or value[10] not in "Tt" or not (value.endswith(("Z", "z")) or value[-6] in "+-"):
            raise ValueError(f"{value!r} is not an RFC 3339 date-time")
        datetime.fromisoformat(value[:-1] + "+00:00" if value[-1] in "Zz" else value)
    return True


def schema_errors(version, name, payload):
    """Every violation of the package's JSON schema `name` (e.g. GetVariablesResponse) by
    `payload`, date-time formats included; [] when it conforms."""
    key = (version, name)
    v = _schema_validators.get(key)
    if v is None:
        path = _SCHEMA_DIRS[version] / f"{name}.json"
        if not path.exists():
            return [f"no schema {name} in {version}"]
        schema = json.loads(path.read_text(encoding="utf-8"))
        cls = jsonschema.validators.validator_for(schema)
        v = _schema_validators[key] = cls(schema, format_checker=_FORMATS)
    return [f"{'/'.join(map(str, e.absolute_path)) or '(payload)'}: {e.message}" for e in v.iter_errors(payload)]


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
        bs = self.csms.boot_status       # a queue of answers, or one answer for every boot (1.6 CSMS)
        status = bs if isinstance(bs, str) else (bs.pop(0) if bs else "Accepted")
        return self._call_result.BootNotification(current_time=_now(), interval=self.csms.heartbeat_s,
                                                  status=status)

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
        if self.csms.refuse_tx:
            self.csms.refuse_tx -= 1
            raise InternalError(description="the CSMS's database is down")
        return self._call_result.TransactionEvent()

    @on("SecurityEventNotification")
    def on_security_event(self, **kw):
        self._rec("SecurityEventNotification", kw)
        return self._call_result.SecurityEventNotification()

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

    async def route_message(self, raw_msg):
        """Check every frame the station sends against the schemas before the package sees it."""
        self.csms._check_frame(self, raw_msg)
        return await super().route_message(raw_msg)

    async def call_fixed(self, payload, action=None):
        """Send a CALL with per-phase keys spelt as the schema wants (the package's own
        call() spells dischargeLimit_L2 as dischargeLimitL2). Returns the raw answer."""
        msg = Call(unique_id=str(self._unique_id_generator()), action=action or type(payload).__name__,
                   payload=to_payload(payload))
        self.sent_actions[msg.unique_id] = msg.action
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
        self.violations = []      # (station, what) for each station frame that fails its schema
        self.frames = 0           # station frames checked
        self.refuse_tx = 0        # answer this many TransactionEvents with a CALLERROR
        self.boot_status = []     # answers to the next BootNotifications (then Accepted)
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
        self.assert_schemas()    # every test that used this CSMS: the station kept to the schemas

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
        cp.sent_actions = {}
        cp.version = ws.subprotocol
        self.stations[station] = cp
        try:
            await cp.start()
        except websockets.exceptions.ConnectionClosed:
            pass
        finally:
            if self.stations.get(station) is cp:
                del self.stations[station]

    def _check_frame(self, cp, raw):
        """OCPP-J framing and the JSON schema of each CALL (<Action>Request), CALLRESULT
        (<Action>Response of the CALL it answers) and CALLERROR (its error code) of a station."""
        self.frames += 1
        bad = []
        try:
            frame = json.loads(raw)
        except ValueError:
            frame = None
        if not isinstance(frame, list) or len(frame) < 3 or not isinstance(frame[1], str):
            bad.append(f"not an OCPP-J frame: {str(raw)[:120]}")
        elif frame[0] == MessageType.Call and len(frame) == 4:
            bad += [f"{frame[2]}Request {e}" for e in schema_errors(cp.version, f"{frame[2]}Request", frame[3])]
        elif frame[0] == MessageType.CallResult and len(frame) == 3:
            action = cp.sent_actions.pop(frame[1], None)
            if action is None:
                bad.append(f"CALLRESULT {frame[1]} answers no CALL of ours")
            else:
                bad += [f"{action}Response {e}" for e in schema_errors(cp.version, f"{action}Response", frame[2])]
        elif frame[0] == MessageType.CallError and len(frame) == 5:
            cp.sent_actions.pop(frame[1], None)
            if frame[2] not in ERROR_CODES or not isinstance(frame[3], str) or not isinstance(frame[4], dict):
                bad.append(f"CALLERROR {frame[2:]} is not [code, description, {{details}}] of Part 4")
        else:
            bad.append(f"malformed frame {str(raw)[:120]}")
        if bad:
            with self._cond:
                self.violations += [(cp.id, b) for b in bad]

    def assert_schemas(self):
        """Fail when any frame of a station broke its schema."""
        assert not self.violations, f"station frames that fail the OCPP schemas: {self.violations[:10]}"

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

    def wait_for(self, action, match=None, timeout=45, after=0):
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

    def send_frame(self, station, text, answer_id, action=None, timeout=15):
        """Send a raw text frame (well formed or not) and return the station's answer with id
        `answer_id` as a list: [3, id, payload] or [4, id, code, description, details]."""
        cp = self.wait_station(station)

        async def go():
            if action is not None:
                cp.sent_actions[answer_id] = action
            async with cp._call_lock:
                await cp._send(text)
                res = await cp._get_specific_response(answer_id, timeout)
            if res.message_type_id == MessageType.CallError:
                return [4, res.unique_id, res.error_code, res.error_description, res.error_details]
            return [3, res.unique_id, res.payload]
        return self.run(go(), timeout + 5)
