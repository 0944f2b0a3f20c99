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
import logging
import re
import uuid
from dataclasses import is_dataclass

from jsonschema import FormatChecker
from ocpp.charge_point import (
    camel_to_snake_case,
    remove_nones,
    serialize_as_dict,
    snake_to_camel_case,
)
from ocpp.exceptions import NotImplementedError as OcppNotImplemented
from ocpp.exceptions import OCPPError, TypeConstraintViolationError
from ocpp.messages import Call, MessageType, get_validator, unpack, validate_payload
from ocpp.routing import after, create_route_map, on

from host_tools.bridge.profiles import parse_time

__all__ = ["VERSIONS", "CallRefused", "Connection", "OCPPError", "after", "check_formats", "fix_phase_keys",
           "on", "routes_of", "snake_to_camel_case", "to_payload"]

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


def check_formats(msg, version):
    """Raise TypeConstraintViolation when a date-time field of the CALL is not RFC 3339."""
    key = (msg.action, version)
    v = _format_validators.get(key)
    if v is None:
        v = _format_validators[key] = get_validator(msg.message_type_id, msg.action, version).evolve(
            format_checker=_FORMATS)
    for e in v.iter_errors(msg.payload):
        if e.validator == "format":
            path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e.absolute_path).lstrip(".")
            why = e.cause if e.cause is not None else f"{e.instance!r} is not a {e.validator_value}"
            raise TypeConstraintViolationError(description=f"{path}: {why}"[:255],
                                               details={"field": path})


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
        """Read frames until the socket closes (raises ConnectionClosed then)."""
        while True:
            raw = await self.ws.recv()
            try:
                msg = unpack(raw)
            except OCPPError as e:
                log.warning("%s: unparsable message dropped: %s", self.id, e)
                continue
            if msg.message_type_id == MessageType.Call:
                asyncio.ensure_future(self._serve_call(msg))
                continue
            fut = self._pending.get(msg.unique_id)
            if fut is None or fut.done():
                log.warning("%s: answer to no CALL of ours dropped: %s", self.id, raw[:200])
            else:
                fut.set_result(msg)

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
            raise OcppNotImplemented(details={"cause": f"{msg.action} is not handled by this station"})
        await validate_payload(msg, self.version)
        check_formats(msg, self.version)
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
                response = await asyncio.wait_for(fut, self.response_timeout)
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
