"""The one place that talks to the `ocpp` package (2.1.0): OCPP-J framing, schema checks and
handler routing come from its public API (`ocpp.messages`, `ocpp.routing.on/after`,
`create_route_map`, the case helpers of `ocpp.charge_point`); the rest is here.

Where the package's `ChargePoint` falls short, and why it is not used. None of these is
fixed in 2.1.0, the release pinned in requirements.txt (and the newest the package index here
offers); two are fixed on the package's main branch since (named below: drop the workaround
when a release with them is pinned); the rest are still so on main (July 2026):
- its `start()` awaits each CALL's handler before reading the next frame, so a handler
  waiting on the controller link holds back the CSMS's answers to our own CALLs (and a
  handler that sends a CALL itself never gets its answer). Still so on main. Here every
  CALL is handled in its own task.
- its `call()` takes only its own dataclasses, and a CALLERROR from the CSMS comes back as
  the same kind of exception as our payload failing the schema. Still so on main. Here a
  CALL is a camelCase dict, and a CALLERROR is `CallRefused` (the offline queue keeps or
  sets aside a message by it).
- it turns `discharge_limit_l2` into `dischargeLimitL2`, but the 2.1 schema spells it
  `dischargeLimit_L2` (also `limit_L2`, `setpoint_L2`, `setpointReactive_L2` and the L3
  twins) and forbids other keys, so any per-phase value fails validation. Still so
  on main. Every payload goes through `fix_phase_keys`, which also repairs dataclass output.
- for OCPP 2.1 it answers an action without a handler with nothing at all; a CSMS then
  waits for its timeout. Fixed on main after 2.1.0 (mobilityhouse/ocpp #744). Here every
  unhandled action gets NotImplemented.
- its validators ignore the schemas' `format`, so `validTo: "zzz"` passes as a date-time
  (mobilityhouse/ocpp #216, #499: closed, not fixed). Every CALL from the CSMS has its
  date-time fields checked here too; one that is not RFC 3339 is answered with a CALLERROR
  TypeConstraintViolation naming the field (OCPP-J, 2.0.1 Part 4: "syntactically correct
  but at least one of the fields violates data type constraints"; dateTime is one of
  OCPP's data types), before any handler runs.
- its `validate_payload` names the wrong CALLERROR for most schema failures (a missing field
  is ProtocolError, a value outside an enumeration FormatViolation; Part 4 says
  OccurrenceConstraintViolation and PropertyConstraintViolation), its `unpack` drops a frame
  it cannot read without an answer, and it answers NotImplemented for an action OCPP has
  but the station does not (Part 4: NotSupported). So in 2.1.0; its main branch was not
  checked for this one. Here `check_call` maps
  each JSON-schema keyword to the Part 4 code and names the field, and `parse_frame` answers
  RpcFrameworkError / MessageTypeNotSupported.
- its `@after` hook does not see the answer the CSMS was given; here it gets it as
  `result=` (an Accepted reset, the file name of a log upload). Main after 2.1.0 has
  `@after(..., inject_response=True)` for this (mobilityhouse/ocpp #683).

A functional block declares its handlers with the package's decorators:
`@on("Reset")` on a method taking the snake_case payload as keyword arguments and
returning a camelCase dict (or a dataclass), `@after("Reset")` on one that runs once
the answer went out.
"""

import asyncio
import inspect
import json
import logging
import re
import uuid
from dataclasses import is_dataclass

import websockets.exceptions
from jsonschema import FormatChecker
from ocpp.charge_point import (
    camel_to_snake_case,
    remove_nones,
    serialize_as_dict,
    snake_to_camel_case,
)
from ocpp.exceptions import FormatViolationError, OccurrenceConstraintViolationError, OCPPError
from ocpp.exceptions import NotImplementedError as OcppNotImplemented
from ocpp.exceptions import (
    NotSupportedError,
    PropertyConstraintViolationError,
    ProtocolError,
    TypeConstraintViolationError,
)
from ocpp.messages import Call, CallError, CallResult, MessageType, get_validator, validate_payload
from ocpp.routing import after, create_route_map, on

from host_tools.bridge.profiles import parse_time

__all__ = ["VERSIONS", "CallRefused", "Connection", "OCPPError", "after", "check_call", "fix_phase_keys",
           "keepalive", "on", "routes_of", "snake_to_camel_case", "to_payload"]

log = logging.getLogger(__name__)

_PHASE_KEY = re.compile(r"^(limit|dischargeLimit|setpoint|setpointReactive)L([23])$")
VERSIONS = {"ocpp2.0.1": "2.0.1", "ocpp2.1": "2.1"}


def fix_phase_keys(obj):
    """Rename per-phase keys to the schema's spelling (limitL2 -> limit_L2), recursively."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            m = _PHASE_KEY.match(k) if isinstance(k, str) else None
            out["{}_L{}".format(m.group(1), m.group(2)) if m else k] = fix_phase_keys(v)
        return out
    if isinstance(obj, list):
        return [fix_phase_keys(v) for v in obj]
    return obj


def to_payload(obj) -> dict:
    """A camelCase payload from a dataclass of the `ocpp` package or a dict (as is)."""
    if is_dataclass(obj) and not isinstance(obj, type):
        obj = snake_to_camel_case(remove_nones(serialize_as_dict(obj)))
    return fix_phase_keys(remove_nones(obj))


_FORMATS = FormatChecker(formats=())
_format_validators = {}


@_FORMATS.checks("date-time", raises=ValueError)
def _is_date_time(value):
    if isinstance(value, str):
        parse_time(value)
    return True


# OCPP-J 2.0.1 Part 4 §4.3: which CALLERROR a schema failure of a CSMS request gets
_ERROR_OF_KEYWORD = {
    "type": TypeConstraintViolationError,          # "somestring": 12
    "maxLength": TypeConstraintViolationError,     # string[20] is the data type
    "format": TypeConstraintViolationError,        # dateTime is an OCPP data type
    "enum": PropertyConstraintViolationError,      # a value the field does not take
    "minimum": PropertyConstraintViolationError,
    "maximum": PropertyConstraintViolationError,
    "exclusiveMinimum": PropertyConstraintViolationError,
    "exclusiveMaximum": PropertyConstraintViolationError,
    "multipleOf": PropertyConstraintViolationError,
    "minLength": PropertyConstraintViolationError,
    "required": OccurrenceConstraintViolationError,   # a field that must be there is not
    "minItems": OccurrenceConstraintViolationError,
    "maxItems": OccurrenceConstraintViolationError,
    "additionalProperties": ProtocolError,            # a field the PDU does not have
}
_ACTION_RE = re.compile(r"^[A-Za-z0-9]{1,64}$")
# the requests a CSMS sends a station (2.0.1 Part 2; 2.1 adds its own): one of these that this
# station has no handler for is NotSupported; any other action is NotImplemented
CSMS_ACTIONS_201 = frozenset((
    "CancelReservation", "CertificateSigned", "ChangeAvailability", "ClearCache", "ClearChargingProfile",
    "ClearDisplayMessage", "ClearVariableMonitoring", "CostUpdated", "CustomerInformation", "DataTransfer",
    "DeleteCertificate", "GetBaseReport", "GetChargingProfiles", "GetCompositeSchedule", "GetDisplayMessages",
    "GetInstalledCertificateIds", "GetLocalListVersion", "GetLog", "GetMonitoringReport", "GetReport",
    "GetTransactionStatus", "GetVariables", "InstallCertificate", "PublishFirmware", "RequestStartTransaction",
    "RequestStopTransaction", "ReserveNow", "Reset", "SendLocalList", "SetChargingProfile", "SetDisplayMessage",
    "SetMonitoringBase", "SetMonitoringLevel", "SetNetworkProfile", "SetVariableMonitoring", "SetVariables",
    "TriggerMessage", "UnlockConnector", "UnpublishFirmware", "UpdateFirmware"))
CSMS_ACTIONS_21 = CSMS_ACTIONS_201 | frozenset((
    "AFRRSignal", "AdjustPeriodicEventStream", "ChangeTransactionTariff", "ClearDERControl", "ClearTariffs",
    "GetCertificateChainStatus", "GetDERControl", "GetPeriodicEventStream", "GetTariffs",
    "NotifyAllowedEnergyTransfer", "NotifyWebPaymentStarted", "RequestBatterySwap", "SetDERControl",
    "SetDefaultTariff", "UpdateDynamicSchedule", "UsePriorityCharging"))


class RpcFrameworkError(OCPPError):
    """Part 4: the frame is not a valid RPC request (e.g. its message id cannot be read)."""
    code = "RpcFrameworkError"
    default_description = "The frame is not a valid OCPP-J RPC message"


class MessageTypeNotSupported(OCPPError):
    code = "MessageTypeNotSupported"
    default_description = "This message type number is not supported"


def _path(e):
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e.absolute_path).lstrip(".")


def _validator(action, version):
    """The request schema of `action` in `version`, or None for an action OCPP does not have."""
    key = (action, version)
    v = _format_validators.get(key)
    if v is None:
        try:
            v = get_validator(MessageType.Call, action, version).evolve(format_checker=_FORMATS)
        except (OSError, ValueError):
            return None
        _format_validators[key] = v
    return v


def check_call(msg, version):
    """Check a CALL from the CSMS against its schema (formats included) and raise the CALLERROR
    Part 4 names for the first failure: nothing of a failing request reaches a handler."""
    v = _validator(msg.action, version)
    if v is None:
        raise OcppNotImplemented(description=f"{msg.action} is not an OCPP {version} action"[:255],
                                 details={"action": msg.action})
    if not isinstance(msg.payload, dict):
        raise FormatViolationError(description="the payload is not a JSON object",
                                   details={"type": type(msg.payload).__name__})
    errors = sorted(v.iter_errors(msg.payload), key=lambda e: (list(map(str, e.absolute_path)), e.validator))
    if not errors:
        return
    e = errors[0]
    path = _path(e)
    if e.validator == "required":
        path = ".".join(x for x in (path, str(e.message).split("'")[1] if "'" in e.message else "") if x)
    why = e.cause if e.cause is not None else e.message
    cls = _ERROR_OF_KEYWORD.get(e.validator, FormatViolationError)
    raise cls(description=f"{path or 'payload'}: {why}"[:255], details={"field": path, "rule": e.validator})


def parse_frame(raw):
    """An OCPP-J frame -> (Call/CallResult/CallError-like message) or raise (unique id or None,
    OCPPError): the CALLERROR to answer. A frame whose id cannot be read is answered with "-1"."""
    try:
        frame = json.loads(raw)
    except (ValueError, TypeError):
        raise _FrameError("-1", RpcFrameworkError(description="the frame is not JSON")) from None
    if not isinstance(frame, list) or len(frame) < 3 or not isinstance(frame[1], str) or not frame[1]:
        raise _FrameError("-1", RpcFrameworkError(description="the frame is not [type, id, ...]"))
    kind, uid = frame[0], frame[1]
    if len(uid) > 36:
        raise _FrameError(uid, RpcFrameworkError(description="message id longer than 36 characters"))
    if kind == MessageType.Call:
        if len(frame) != 4 or not isinstance(frame[2], str) or not _ACTION_RE.match(frame[2]):
            raise _FrameError(uid, RpcFrameworkError(description="a CALL is [2, id, action, {payload}]"))
        return Call(uid, frame[2], frame[3])
    if kind == MessageType.CallResult and len(frame) == 3:
        return CallResult(uid, frame[2])
    if kind == MessageType.CallError and len(frame) == 5:
        return CallError(uid, frame[2], frame[3], frame[4])
    if kind in (MessageType.CallResult, MessageType.CallError):
        raise _FrameError(None, RpcFrameworkError(description="malformed answer"))
    raise _FrameError(uid, MessageTypeNotSupported(description=f"message type {kind!r} is not supported"))


class _FrameError(Exception):
    def __init__(self, uid, error):
        super().__init__(str(error))
        self.uid, self.error = uid, error


async def keepalive(ws, interval, timeout, on_dead=None, changed=None):
    """WebSocket ping every `interval()` s (0: off); no pong within `timeout()` s means the
    link is dead (a silently dropped connection sends no FIN): the TCP connection is aborted
    at once, so the reader ends and the session reconnects. `changed` (an asyncio.Event) is
    set when the interval is changed: it is read again at once. Without it, once a second."""
    loop = asyncio.get_running_loop()
    last = loop.time()
    while True:
        every = interval()
        due = last + every if every and every > 0 else None
        now = loop.time()
        if due is None or now < due:
            wait = (None if due is None else due - now) if changed is not None else \
                (1.0 if due is None else min(1.0, due - now))
            if changed is None:
                await asyncio.sleep(wait)
            else:
                try:
                    async with asyncio.timeout(wait):
                        await changed.wait()
                except TimeoutError:
                    pass
                changed.clear()
            continue
        last = now
        try:
            pong = await ws.ping()
            async with asyncio.timeout(timeout()):
                await pong
        except asyncio.TimeoutError:
            if on_dead is not None:
                on_dead()
            ws.transport.abort()
            return
        except websockets.exceptions.ConnectionClosed:
            return


def routes_of(*blocks):
    """One route map (the package's shape: action -> {"_on_action", "_after_action"}) from the
    `@on`/`@after` methods of the blocks. An action claimed by two blocks is a wiring bug."""
    routes = {}
    for block in blocks:
        for action, hooks in create_route_map(block).items():
            mine = routes.setdefault(str(action), {})
            for key in ("_on_action", "_after_action"):
                if key in hooks:
                    if key in mine:
                        raise ValueError(f"{action} is handled by two blocks ({type(block).__name__})")
                    mine[key] = hooks[key]
    return routes


class CallRefused(Exception):
    """The CSMS answered a CALL with a CALLERROR."""

    def __init__(self, code, description):
        super().__init__(f"{code}: {description}")
        self.code = code


class Connection:
    """One OCPP-J session over an open WebSocket `ws` (recv/send of text frames)."""

    def __init__(self, station_id, ws, version, routes, response_timeout=30):
        self.id = station_id
        self.ws = ws
        self.version = version
        self.routes = routes
        self.response_timeout = response_timeout
        self._one_call = asyncio.Lock()      # OCPP-J: one CALL of ours outstanding at a time
        self._pending = {}                   # unique id -> future of the CALLRESULT/CALLERROR

    async def start(self):
        """Read frames until the socket closes (raises ConnectionClosed then). Our CALLs
        still waiting for an answer fail at once: the queue sends them again on the next
        session rather than waiting for the response timeout."""
        try:
            while True:
                raw = await self.ws.recv()
                try:
                    msg = parse_frame(raw)
                except _FrameError as e:
                    log.warning("%s: bad frame: %s: %s", self.id, e.error.code, str(raw)[:200])
                    if e.uid is not None:
                        await self.send(CallError(e.uid, e.error.code, e.error.description,
                                                  e.error.details or {}).to_json())
                    continue
                if msg.message_type_id == MessageType.Call:
                    asyncio.ensure_future(self._serve_call(msg))
                    continue
                fut = self._pending.get(msg.unique_id)
                if fut is None or fut.done():
                    log.warning("%s: answer to no CALL of ours dropped: %s", self.id, str(raw)[:200])
                else:
                    fut.set_result(msg)
        except BaseException as e:
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(e if isinstance(e, websockets.exceptions.ConnectionClosed)
                                      else ConnectionError(f"session ended: {e!r}"))
            raise

    async def _serve_call(self, msg):
        try:
            await self._dispatch(msg)
        except OCPPError as e:
            await self.send(msg.create_call_error(e).to_json())
        except Exception as e:  # a bug here must still answer the CSMS
            log.exception("%s: %s handler failed", self.id, msg.action)
            await self.send(msg.create_call_error(e).to_json())

    async def _dispatch(self, msg):
        hooks = self.routes.get(msg.action, {})
        fn = hooks.get("_on_action")
        if fn is None:
            known = CSMS_ACTIONS_21 if self.version == "2.1" else CSMS_ACTIONS_201
            if msg.action not in known or _validator(msg.action, self.version) is None:
                raise OcppNotImplemented(
                    description=f"{msg.action} is not an OCPP {self.version} request to a station"[:255])
            raise NotSupportedError(description=f"{msg.action} is not supported by this station")
        check_call(msg, self.version)
        kwargs = camel_to_snake_case(msg.payload)
        result = fn(**kwargs)
        if inspect.isawaitable(result):
            result = await result
        response = msg.create_call_result(to_payload(result))
        await validate_payload(response, self.version)
        await self.send(response.to_json())
        after_fn = hooks.get("_after_action")
        if after_fn is not None:
            asyncio.ensure_future(_run_after(self.id, msg.action, after_fn, kwargs, result))

    async def call_raw(self, action: str, payload: dict) -> dict:
        """Send a CALL built from a camelCase dict; returns the CALLRESULT payload.
        Raises CallRefused on a CALLERROR and asyncio.TimeoutError without answer."""
        call = Call(unique_id=str(uuid.uuid4()), action=action, payload=to_payload(payload))
        await validate_payload(call, self.version)
        async with self._one_call:
            fut = self._pending[call.unique_id] = asyncio.get_running_loop().create_future()
            try:
                await self.send(call.to_json())
                # asyncio.timeout, not wait_for: 3.11's wait_for loses a cancellation that
                # arrives as the answer does, and a stopped station would hang in its session
                async with asyncio.timeout(self.response_timeout):
                    response = await fut
            finally:
                del self._pending[call.unique_id]
        if response.message_type_id == MessageType.CallError:
            raise CallRefused(response.error_code, response.error_description)
        response.action = action
        await validate_payload(response, self.version)
        return response.payload

    async def send(self, message):
        log.debug("%s: send %s", self.id, message)
        await self.ws.send(message)


async def _run_after(cp_id, action, fn, kwargs, result):
    try:
        r = fn(result=result, **kwargs)
        if inspect.isawaitable(r):
            await r
    except Exception:
        log.exception("%s: after-%s failed", cp_id, action)
