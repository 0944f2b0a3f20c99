"""A small OCPP 1.6J CSMS for the bridge tests and the bench, written with the `ocpp`
package's v16 module. It also serves 2.0.1/2.1 (the tests' 2.x CSMS) when it offers them,
so one server shows which version a station picks.

Every CALL a 1.6 station sends, and every answer it gives to our CALLs, is checked against
the package's 1.6 JSON schemas (ocpp/v16/schemas) with their date-time formats; each
failure is kept in `schema_failures` (the tests assert it stays empty). Received CALLs
are recorded camelCase, as sent, in `received` (station, action, payload, time)."""

import decimal
import json
import time
import uuid

from jsonschema import FormatChecker
from ocpp.messages import Call, MessageType, get_validator, unpack
from ocpp.routing import on
from ocpp.v16 import ChargePoint as CP16Base
from ocpp.v16 import call_result
from ocpp_csms import Csms

from host_tools.bridge.profiles import parse_time

_FORMATS = FormatChecker(formats=())


@_FORMATS.checks("date-time", raises=ValueError)
def _date_time(value):
    if isinstance(value, str):
        parse_time(value)
    return True


def schema_problems(kind, action, payload):
    # numbers read as Decimal: the 1.6 schemas' `multipleOf: 0.1` fails on binary floats
    v = get_validator(kind, action, "1.6", parse_float=decimal.Decimal).evolve(format_checker=_FORMATS)
    return [f"{action}{' answer' if kind == MessageType.CallResult else ''}: "
            f"{'.'.join(str(p) for p in e.absolute_path) or '(payload)'}: {e.message}"
            for e in v.iter_errors(json.loads(json.dumps(payload, default=str), parse_float=decimal.Decimal))]


def _now():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class CP16(CP16Base):
    csms = None

    async def route_message(self, raw_msg):
        msg = unpack(raw_msg)
        if msg.message_type_id == MessageType.Call:
            self.csms.check(self.id, MessageType.Call, msg.action, msg.payload)
            self.csms._record(self.id, msg.action, msg.payload)
            if msg.action in self.csms.hold:        # received, never answered (once)
                self.csms.hold.discard(msg.action)
                return None
        return await super().route_message(raw_msg)

    @on("BootNotification")
    def on_boot(self, **_):
        c = self.csms
        return call_result.BootNotification(current_time=_now(), interval=c.heartbeat_s, status=c.boot_status)

    @on("Heartbeat")
    def on_hb(self, **_):
        return call_result.Heartbeat(current_time=_now())

    @on("StatusNotification")
    def on_status(self, **_):
        return call_result.StatusNotification()

    @on("Authorize")
    def on_authorize(self, **_):
        return call_result.Authorize(id_tag_info={"status": self.csms.authorize_status})

    @on("StartTransaction")
    def on_start(self, **_):
        c = self.csms
        c.next_tx_id += 1
        return call_result.StartTransaction(transaction_id=c.next_tx_id, id_tag_info={"status": c.start_status})

    @on("StopTransaction")
    def on_stop(self, **_):
        return call_result.StopTransaction()

    @on("MeterValues")
    def on_mv(self, **_):
        return call_result.MeterValues()

    @on("SecurityEventNotification")
    def on_sec(self, **_):
        return call_result.SecurityEventNotification()

    @on("SignedFirmwareStatusNotification")
    def on_sfw(self, **_):
        return call_result.SignedFirmwareStatusNotification()

    @on("FirmwareStatusNotification")
    def on_fw(self, **_):
        return call_result.FirmwareStatusNotification()

    @on("DiagnosticsStatusNotification")
    def on_diag(self, **_):
        return call_result.DiagnosticsStatusNotification()

    async def call_json(self, action, payload):
        """Send a CALL (camelCase dict, as a CSMS would write it); the raw answer."""
        msg = Call(unique_id=str(uuid.uuid4()), action=action, payload=payload)
        async with self._call_lock:
            await self._send(msg.to_json())
            return await self._get_specific_response(msg.unique_id, self._response_timeout)


class Csms16(Csms):
    def __init__(self, *, versions=("ocpp1.6",), **kw):
        super().__init__(versions=versions, **kw)
        self.boot_status = "Accepted"
        self.authorize_status = "Accepted"
        self.start_status = "Accepted"
        self.next_tx_id = 1000
        self.schema_failures = []
        self.picked = {}            # station -> subprotocol of its last connection
        self.hold = set()           # actions to leave unanswered, once each

    def check(self, station, kind, action, payload):
        for p in schema_problems(kind, action, payload):
            self.schema_failures.append((station, p))

    async def _handler(self, ws):
        station = ws.request.path.rsplit("/", 1)[-1]
        self.picked[station] = ws.subprotocol
        if ws.subprotocol != "ocpp1.6":
            return await super()._handler(ws)
        cp = CP16(station, ws, response_timeout=15)
        cp.csms = self
        cp.version = ws.subprotocol
        self.stations[station] = cp
        try:
            await cp.start()
        except Exception:  # noqa: BLE001 - the connection closed
            pass
        finally:
            if self.stations.get(station) is cp:
                del self.stations[station]

    def request16(self, station, action, payload, timeout=15):
        """Send a 1.6 CALL; (kind, payload): kind 'result' (schema-checked) or the CALLERROR code."""
        cp = self.wait_station(station)

        async def go():
            res = await cp.call_json(action, payload)
            if res.message_type_id == MessageType.CallError:
                return res.error_code, res.error_description
            self.check(station, MessageType.CallResult, action, res.payload)
            return "result", res.payload
        return self.run(go(), timeout)

    def drop(self, station):
        """Close the station's connection (the network goes away for a moment)."""
        cp = self.stations.get(station)
        if cp is not None:
            self.run(cp._connection.close())
