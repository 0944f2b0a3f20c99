"""OCPP-J for 1.6: the one module of this package that reaches the `ocpp` package.

Framing, schema checks (the package's `ocpp/v16/schemas`), date-time checks, routing of
CSMS requests to the blocks' `@on`/`@after` handlers and our own CALLs are the shared
`Connection` of host_tools.bridge.ocpp.connection, which already takes the OCPP version
as a parameter: the same workarounds for the package's `ChargePoint` apply to 1.6, so
they are not copied. The blocks of this package import from here only.

Keep-alive: OCPP 1.6 configures the WebSocket ping with the `WebSocketPingInterval`
key (0 = no ping). `keepalive()` sends a ping at that interval and closes a connection
whose pong does not come back within one interval, so a dead CSMS link is noticed and
the offline queue takes over."""

import asyncio
import decimal
import logging

from ocpp.messages import MessageType, get_validator

from host_tools.bridge.ocpp.connection import CallRefused, Connection, OCPPError, after, on, routes_of

__all__ = ["SUBPROTOCOL", "VERSION", "CallRefused", "Connection", "OCPPError", "after", "keepalive", "on",
           "plain_numbers", "routes_of", "schema_errors", "stop_if_cancelled"]

log = logging.getLogger(__name__)

VERSION = "1.6"
SUBPROTOCOL = "ocpp1.6"


def plain_numbers(obj):
    """The payload with Decimals as int/float. The package checks 1.6 SetChargingProfile and
    RemoteStartTransaction with Decimal numbers (for `multipleOf: 0.1`) and leaves the CALL's
    payload parsed that way, so a handler would get Decimal limits."""
    if isinstance(obj, dict):
        return {k: plain_numbers(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [plain_numbers(v) for v in obj]
    if isinstance(obj, decimal.Decimal):
        return int(obj) if obj == obj.to_integral_value() and "." not in str(obj) else float(obj)
    return obj


def stop_if_cancelled():
    """Raise CancelledError when this task was cancelled while it waited for a CSMS answer.

    `Connection.call_raw` waits with asyncio.wait_for, which before Python 3.12 returns the
    answer and drops the cancel when both arrive together (CPython gh-86296); a loop that
    then only sleeps and calls again would never stop (a bridge that does not shut down).
    The loops here call this after each answer."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError()


def schema_errors(action, payload, answer=False):
    """The 1.6 schema's complaints about a payload we built (empty when it passes)."""
    kind = MessageType.CallResult if answer else MessageType.Call
    v = get_validator(kind, action, VERSION)
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '(payload)'}: {e.message}"
            for e in v.iter_errors(payload)]


async def keepalive(ws, interval_s, on_dead):
    """Ping every `interval_s()` seconds (read each time: ChangeConfiguration takes effect at
    the next ping); no pong within the interval -> on_dead(reason) and the socket closed."""
    while True:
        every = interval_s()
        if not every or every <= 0:
            await asyncio.sleep(5.0)    # ping off: look at the key again later
            continue
        await asyncio.sleep(every)
        try:
            pong = await ws.ping()
            await asyncio.wait_for(pong, every)
            stop_if_cancelled()
        except asyncio.TimeoutError:
            on_dead(f"no pong within {every:g} s (WebSocketPingInterval)")
            await ws.close(code=1011, reason="keep-alive timeout")
            return
        except Exception as e:  # noqa: BLE001 - a closed socket ends the session elsewhere
            log.debug("keep-alive ping: %r", e)
            return
