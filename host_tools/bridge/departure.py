"""The driver's departure on its way to the controller.

The app gives an absolute time (ISO 8601 with a zone); the controller has no wall clock, so
the bridge sends it as whole seconds from now (`departure_s`, rounded up), worked out when the
command is sent. The controller keeps it as a deadline on its tick clock, which reads a
deadline correctly only up to 6.2 days ahead: a departure further than DEPARTURE_MAX_S, or one
that has passed, is refused here, naming `departure`, before anything is sent.
"""

import math
from datetime import datetime, timezone

from core.setpoint import DEPARTURE_MAX_S


def parse(value):
    """The app's departure as an aware datetime; ValueError naming `departure` and why."""
    if not isinstance(value, str):
        raise ValueError(f"departure: {value!r} is not a time (ISO 8601 with a zone, e.g. "
                         "2026-12-05T17:30:00+01:00)")
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"departure: {value[:40]!r} is not an ISO 8601 time") from None
    if t.tzinfo is None:
        raise ValueError(f"departure: {value[:40]!r} has no time zone")
    return t


def seconds_from_now(value, now=None):
    """Whole seconds from `now` (an aware datetime, default the wall clock) to the app's
    departure, rounded up; ValueError naming `departure` when it has passed or is too far."""
    t = parse(value)
    now = now or datetime.now(timezone.utc)
    s = math.ceil((t - now).total_seconds())
    if s < 1:
        raise ValueError(f"departure: {t.isoformat()} has passed (now {now.isoformat(timespec='seconds')})")
    if s > DEPARTURE_MAX_S:
        raise ValueError(f"departure: {t.isoformat()} is more than {DEPARTURE_MAX_S // 86400} days ahead "
                         f"({s} s; the controller keeps at most {DEPARTURE_MAX_S} s)")
    return s


def controller_args(app_args, now=None):
    """The controller's soc_target args for the app's: `departure` becomes `departure_s`;
    a null or missing departure sends none (which clears the controller's)."""
    out = {k: v for k, v in app_args.items() if k != "departure"}
    dep = app_args.get("departure")
    if dep is not None:
        out["departure_s"] = seconds_from_now(dep, now)
    return out
