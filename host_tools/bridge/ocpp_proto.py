"""OCPP-J plumbing on top of the `ocpp` package: one ChargePoint class per version, our
own serialisation, and a uniform CALLERROR for every action we do not handle.

Why not the package's defaults:
- `ocpp` 2.1.0 turns `discharge_limit_l2` into `dischargeLimitL2`, but the 2.1 schema
  spells it `dischargeLimit_L2` (also `limit_L2`, `setpoint_L2`, `setpointReactive_L2`
  and the L3 twins) and forbids other keys, so any per-phase value fails validation.
  Payloads here are built as camelCase dicts and passed through `fix_phase_keys`,
  which also repairs dataclass output; tests check both directions.
- for OCPP 2.1 the package answers an action without a handler with nothing at all;
  a CSMS then waits for its timeout. Here every unhandled action gets NotImplemented.
- a CALL is handled in its own task, so a handler waiting on the controller link does
  not hold back the CSMS's answers to our own CALLs.
- the package's validators ignore the schemas' `format`, so `validTo: "zzz"` passes as a
  date-time. Every CALL from the CSMS has its date-time fields checked here too; one that is
  not RFC 3339 is answered with a CALLERROR TypeConstraintViolation naming the field (OCPP-J,
  2.0.1 Part 4: "syntactically correct but at least one of the fields violates data type
  constraints"; dateTime is one of OCPP's data types), before any handler runs.
"""

import asyncio
import inspect
import logging
import re
from dataclasses import is_dataclass

from ocpp import v21, v201
from ocpp.charge_point import (
    camel_to_snake_case,
    remove_nones,
    serialize_as_dict,
    snake_to_camel_case,
)
from jsonschema import FormatChecker
from ocpp.exceptions import NotImplementedError as OcppNotImplemented
from ocpp.exceptions import OCPPError, TypeConstraintViolationError
from ocpp.messages import Call, MessageType, get_validator, unpack, validate_payload

from host_tools.bridge.profiles import parse_time

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


class CallRefused(Exception):
    """The CSMS answered a CALL with a CALLERROR."""

    def __init__(self, code, description):
        super().__init__(f"{code}: {description}")
        self.code = code


class _Proto:
    """Mixed into the package's v201/v21 ChargePoint. Handlers are methods named
    `on_<Action>` on `self.handler` (an object the station supplies); they take the
    snake_case payload as keyword arguments and return a camelCase dict. An optional
    `after_<Action>` runs after the answer went out."""

    handler = None

    async def start(self):
        while True:
            raw = await self._connection.recv()
            try:
                msg = unpack(raw)
            except OCPPError as e:
                log.warning("%s: unparsable message dropped: %s", self.id, e)
                continue
            if msg.message_type_id == MessageType.Call:
                asyncio.ensure_future(self._serve_call(msg))
            else:
                self._response_queue.put_nowait(msg)

    async def _serve_call(self, msg):
        try:
            await self._handle_call(msg)
        except OCPPError as e:
            await self._send(msg.create_call_error(e).to_json())
        except Exception as e:  # a bug here must still answer the CSMS
            log.exception("%s: %s handler failed", self.id, msg.action)
            await self._send(msg.create_call_error(e).to_json())

    async def _handle_call(self, msg):
        fn = getattr(self.handler, "on_" + msg.action, None)
        if fn is None:
            raise OcppNotImplemented(details={"cause": f"{msg.action} is not handled by this station"})
        await validate_payload(msg, self._ocpp_version)
        check_formats(msg, self._ocpp_version)
        kwargs = camel_to_snake_case(msg.payload)
        result = fn(**kwargs)
        if inspect.isawaitable(result):
            result = await result
        response = msg.create_call_result(to_payload(result))
        await validate_payload(response, self._ocpp_version)
        await self._send(response.to_json())
        after = getattr(self.handler, "after_" + msg.action, None)
        if after is not None:
            asyncio.ensure_future(_run_after(self.id, msg.action, after, kwargs, result))

    async def call_raw(self, action: str, payload: dict) -> dict:
        """Send a CALL built from a camelCase dict; returns the CALLRESULT payload.
        Raises CallRefused on a CALLERROR and asyncio.TimeoutError without answer."""
        call = Call(unique_id=str(self._unique_id_generator()), action=action,
                    payload=to_payload(payload))
        await validate_payload(call, self._ocpp_version)
        async with self._call_lock:
            await self._send(call.to_json())
            response = await self._get_specific_response(call.unique_id, self._response_timeout)
        if response.message_type_id == MessageType.CallError:
            raise CallRefused(response.error_code, response.error_description)
        response.action = action
        await validate_payload(response, self._ocpp_version)
        return response.payload

    async def _send(self, message):
        log.debug("%s: send %s", self.id, message)
        await self._connection.send(message)


async def _run_after(cp_id, action, fn, kwargs, result):
    try:
        r = fn(result=result, **kwargs)
        if inspect.isawaitable(r):
            await r
    except Exception:
        log.exception("%s: after-%s failed", cp_id, action)


class ChargePoint201(_Proto, v201.ChargePoint):
    pass


class ChargePoint21(_Proto, v21.ChargePoint):
    pass


def charge_point_class(version: str):
    return {"2.0.1": ChargePoint201, "2.1": ChargePoint21}[version]
