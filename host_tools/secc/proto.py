"""The SECC worker's line to the gateway: one JSON object a line over a socketpair.

Standard library only: the worker runs in the ISO 15118 venv (.venv-15118), which has the
`iso15118` package and nothing of the host tools. Every message has a type `t`.

gateway -> worker
  {"t": "evse", ...}   the controller's present limits and readings (below), sent whenever
                       they change and at least every POLL_S; the worker answers every
                       -20 message from the last one it got
  {"t": "stop"}        end the process (the gateway is stopping)

  evse fields: chg_a, dis_a (present limits, A, >= 0), volts (V), amps (measured, + into the EV),
  soc (%, or null), target_soc, min_soc (%, or null), departure_s (s from now, or null),
  cp ("A".."F"), contactor (bool), stop (bool: the controller wants the session over:
  fault, stopped, HLC failed), mode (the controller's mode), seq (rises with each snapshot)

worker -> gateway
  {"t": "ready", "codec_ms": N}                       codec (JVM) started, servers up
  {"t": "state", "state": NAME}                       the -20 state the session entered
  {"t": "pair", "req": NAME, "ms": F, "seq": N}       one request answered: decode .. encode,
                                                      and the evse snapshot it used
  {"t": "ev", "soc": %, "service": S, "mode": M, ...} what the vehicle reported
  {"t": "handshake_failed", "peer": ADDR, "why": TEXT}  TLS handshake failed or timed out
  {"t": "ended", "ok": bool, "state": NAME, "reason": TEXT}  the session ended
"""

import json

POLL_S = 0.25          # the gateway's status poll: a limit change reaches the worker within this
KEEPALIVE_S = 1.0      # the gateway's `hlc` keep-alive to the controller


def dumps(msg):
    return (json.dumps(msg, separators=(",", ":")) + "\n").encode()


def loads(line):
    """The message in one line, or None when it is not a JSON object with a text `t`."""
    try:
        msg = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(msg, dict) or not isinstance(msg.get("t"), str):
        return None
    return msg
