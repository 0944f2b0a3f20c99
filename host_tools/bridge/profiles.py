"""Charging profiles: storing them, the limit in force now, the composite schedule, and
what the controller is told.

Profiles are kept as the snake_case dicts the `ocpp` package hands to handlers.
Selection follows OCPP 2.0.1 K01/K08 in the simple form one EVSE needs: the
TxProfile of the running transaction with the highest stack level, else the
TxDefaultProfile with the highest stack level, capped by the highest
ChargingStationMaxProfile. Within a profile, the period in force is the last one
whose startPeriod has passed.

Discharge: in 2.0.1 a negative limit is the widespread convention for "discharge at
up to this rate". In 2.1 the period says it: `operationMode` ChargingOnly,
CentralSetpoint (with `setpoint`, negative = discharge, and `dischargeLimit`,
negative numbers) or Idle. Per-phase values (`_L2`, `_L3`) of a symmetric controller
are folded into the smallest magnitude of the three, which never exceeds any phase.
In W, a value is the sum over the phases unless L2/L3 values are given: then each
value, the unsuffixed one included, is one phase's power (the L1 value).
"""

import math
import re
from datetime import datetime, timedelta, timezone

SUPPORTED_MODES = ("ChargingOnly", "CentralSetpoint", "Idle")
PURPOSES = ("ChargingStationMaxProfile", "TxDefaultProfile", "TxProfile")
KINDS = ("Absolute", "Recurring", "Relative")
RECURRENCY = ("Daily", "Weekly")
MAX_SCHEDULES = 3          # 2.0.1: up to three schedules (ISO 15118 offers); the first one is followed
MAX_PERIODS = 1024         # chargingSchedulePeriod 1..1024 (both versions' schemas)
# RFC 3339 date-time, OCPP's dateTime; a missing offset is read as UTC (OCPP times are UTC)
_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})?$")
# the period's numbers, each with its per-phase twins (2.1)
_PERIOD_NUMBERS = ("limit", "setpoint", "discharge_limit", "setpoint_reactive")


class ProfileError(ValueError):
    """A profile the station cannot follow; the message says why (reasonCode in .reason)."""

    def __init__(self, reason, msg):
        super().__init__(msg)
        self.reason = reason


def parse_time(s):
    """A datetime from an OCPP dateTime (RFC 3339); ValueError saying why for anything else."""
    if s is None:
        return None
    if isinstance(s, datetime):
        return s if s.tzinfo is not None else s.replace(tzinfo=timezone.utc)
    if not isinstance(s, str) or not _DATE_TIME.match(s):
        raise ValueError(f"{s!r} is not an RFC 3339 date-time")
    text = s
    frac = re.search(r"\.(\d+)", s)
    if frac and len(frac.group(1)) > 6:   # datetime keeps microseconds: cut nanoseconds
        s = s[:frac.start(1) + 6] + s[frac.end(1):]
    s = s[:-1] + "+00:00" if s[-1] in "Zz" else s
    try:
        dt = datetime.fromisoformat(s.replace("t", "T"))
    except ValueError:   # a date or time out of range: 2026-02-30, 25:00
        raise ValueError(f"{text!r} is not a valid date and time") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt


def iso(dt):
    return dt.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _schedule(profile):
    s = profile["charging_schedule"]
    return s[0] if isinstance(s, list) else s


def _field(where, key):
    """The camelCase name the CSMS wrote, for messages (`charging_profile_purpose` ->
    `chargingProfilePurpose`, `limit_l2` -> `limit_L2`)."""
    head, *rest = key.split("_")
    name = head + "".join(w[:1].upper() + w[1:] if not re.fullmatch(r"l[23]", w) else "_" + w.upper()
                          for w in rest)
    return f"{where}.{name}"


def _int(d, key, where, lo=None, hi=None, required=False):
    v = d.get(key)
    if v is None:
        if required:
            raise ProfileError("InvalidValue", f"{_field(where, key)}: missing")
        return None
    if type(v) is not int or (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = (f" {lo} .. {hi}" if hi is not None else f" >= {lo}") if lo is not None else ""
        raise ProfileError("InvalidValue", f"{_field(where, key)}: {v!r} is not an integer{rng}")
    return v


def _number(d, key, where, lo=None):
    v = d.get(key)
    if v is None:
        return None
    if type(v) not in (int, float) or not math.isfinite(v) or (lo is not None and v < lo):
        raise ProfileError("InvalidValue", f"{_field(where, key)}: {v!r} is not a finite number"
                           + (f" >= {lo}" if lo is not None else ""))
    return float(v)


def _time(d, key, where):
    try:
        return parse_time(d.get(key))
    except ValueError as e:
        raise ProfileError("InvalidValue", f"{_field(where, key)}: {e}") from None


def _check_period(period, where, version):
    if not isinstance(period, dict):
        raise ProfileError("InvalidSchedule", f"{where}: must be an object")
    out = dict(period)
    out["start_period"] = _int(period, "start_period", where, lo=0, required=True)
    for base in _PERIOD_NUMBERS:
        for key in (base, base + "_l2", base + "_l3"):
            out[key] = _number(period, key, where)
    out["number_phases"] = _int(period, "number_phases", where, 1, 3)
    out["phase_to_use"] = _int(period, "phase_to_use", where, 1, 3)
    mode = period.get("operation_mode")
    if mode is not None and mode not in SUPPORTED_MODES:
        raise ProfileError("UnsupportedOperationMode",
                           f"{where}.operationMode: {mode} is not supported "
                           f"(supported: {', '.join(SUPPORTED_MODES)})")
    if version == "2.0.1" and out["limit"] is None:
        raise ProfileError("InvalidSchedule", f"{where}.limit: missing (2.0.1 needs a limit in each period)")
    return {k: v for k, v in out.items() if v is not None}


def _check_schedule(sched, where, kind, version):
    if not isinstance(sched, dict):
        raise ProfileError("InvalidSchedule", f"{where}: must be an object")
    out = dict(sched)
    if sched.get("charging_rate_unit") not in ("A", "W"):
        raise ProfileError("UnsupportedRateUnit", f"{where}.chargingRateUnit: "
                           f"{sched.get('charging_rate_unit')!r} is not A or W")
    out["start_schedule"] = _time(sched, "start_schedule", where)
    out["duration"] = _int(sched, "duration", where, lo=0)
    out["min_charging_rate"] = _number(sched, "min_charging_rate", where, lo=0)
    periods = sched.get("charging_schedule_period")
    if not isinstance(periods, list) or not 1 <= len(periods) <= MAX_PERIODS:
        raise ProfileError("InvalidSchedule", f"{where}.chargingSchedulePeriod: 1 to {MAX_PERIODS} periods needed")
    out["charging_schedule_period"] = [_check_period(p, f"{where}.chargingSchedulePeriod[{i}]", version)
                                       for i, p in enumerate(periods)]
    starts = [p["start_period"] for p in out["charging_schedule_period"]]
    if starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:])):
        raise ProfileError("InvalidSchedule", f"{where}.chargingSchedulePeriod: startPeriod must start at 0 "
                           f"and increase (got {starts[:8]})")
    if kind in ("Absolute", "Recurring") and out["start_schedule"] is None:
        raise ProfileError("InvalidSchedule", f"{where}.startSchedule: an {kind} profile needs one")
    return {k: v for k, v in out.items() if v is not None}


def validate_profile(profile, version):
    """Parse and check every field of a charging profile the station would use, before it is
    stored. Returns a copy with its times as datetimes and its numbers checked, so nothing
    stored can fail later; raises ProfileError naming the field (as the CSMS spelt it)."""
    where = "chargingProfile"
    if not isinstance(profile, dict):
        raise ProfileError("InvalidProfile", f"{where}: must be an object")
    out = dict(profile)
    out["id"] = _int(profile, "id", where, required=True)
    out["stack_level"] = _int(profile, "stack_level", where, lo=0, required=True)
    purpose = profile.get("charging_profile_purpose")
    if purpose not in PURPOSES:
        raise ProfileError("UnsupportedPurpose", f"{where}.chargingProfilePurpose: {purpose} is not supported")
    kind = profile.get("charging_profile_kind")
    if kind not in KINDS:
        raise ProfileError("UnsupportedKind", f"{where}.chargingProfileKind: {kind} is not supported "
                           f"(supported: {', '.join(KINDS)})")
    rec = profile.get("recurrency_kind")
    if kind == "Recurring" and rec not in RECURRENCY:
        raise ProfileError("InvalidProfile", f"{where}.recurrencyKind: {rec!r} is not Daily or Weekly")
    out["valid_from"] = _time(profile, "valid_from", where)
    out["valid_to"] = _time(profile, "valid_to", where)
    if out["valid_from"] and out["valid_to"] and out["valid_to"] <= out["valid_from"]:
        raise ProfileError("InvalidProfile", f"{where}.validTo: not after validFrom")
    tx = profile.get("transaction_id")
    if tx is not None and (not isinstance(tx, str) or not 1 <= len(tx) <= 36):
        raise ProfileError("InvalidValue", f"{where}.transactionId: {tx!r} is not a transaction id")
    scheds = profile.get("charging_schedule")
    if isinstance(scheds, dict):
        scheds = [scheds]
    if not isinstance(scheds, list) or not 1 <= len(scheds) <= MAX_SCHEDULES:
        raise ProfileError("InvalidSchedule", f"{where}.chargingSchedule: 1 to {MAX_SCHEDULES} schedules needed")
    out["charging_schedule"] = [_check_schedule(sc, f"{where}.chargingSchedule[{i}]", kind, version)
                                for i, sc in enumerate(scheds)]
    return {k: v for k, v in out.items() if v is not None}


def check_profile(profile, version):
    """Raise ProfileError when the station cannot follow this profile."""
    validate_profile(profile, version)


class ProfileStore:
    """The profiles in force. Only validated profiles get in (validate_profile), and a change
    is made on a copy that replaces the store as a whole once it was applied: no entry can
    make a later SetChargingProfile, ClearChargingProfile or composite schedule fail."""

    def __init__(self, profiles=None):
        self.profiles = dict(profiles or {})       # id -> (validated profile, time received)

    def with_profile(self, profile, now, version="2.1"):
        """A new store: this one plus `profile` (validated first; one with the same id is
        replaced, OCPP K01.FR.05). Raises ProfileError and leaves this store as it was."""
        p = validate_profile(profile, version)
        new = ProfileStore(self.profiles)
        new.profiles[p["id"]] = (p, now)
        return new

    def set(self, profile, now, version="2.1"):
        self.profiles = self.with_profile(profile, now, version).profiles

    def without(self, profile_id=None, purpose=None, stack_level=None):
        """(a new store without the matching profiles, how many went)."""
        new = ProfileStore(self.profiles)
        gone = [pid for pid, (p, _) in self.profiles.items()
                if (profile_id is None or pid == profile_id)
                and (purpose is None or p.get("charging_profile_purpose") == purpose)
                and (stack_level is None or p.get("stack_level") == stack_level)]
        for pid in gone:
            del new.profiles[pid]
        return new, len(gone)

    def clear(self, profile_id=None, purpose=None, stack_level=None):
        """Remove matching profiles; returns how many went."""
        new, n = self.without(profile_id, purpose, stack_level)
        self.profiles = new.profiles
        return n

    def end_transaction(self, tx_id):
        """TxProfiles end with their transaction."""
        for pid in [pid for pid, (p, _) in self.profiles.items()
                    if p.get("charging_profile_purpose") == "TxProfile"]:
            del self.profiles[pid]

    # -- evaluation

    @staticmethod
    def _start(profile, received, tx_start, now):
        sched = _schedule(profile)
        kind = profile.get("charging_profile_kind")
        if kind == "Relative":
            return tx_start or received
        start = parse_time(sched.get("start_schedule")) or received
        if kind == "Recurring":
            period = timedelta(days=7 if profile.get("recurrency_kind") == "Weekly" else 1)
            if now >= start:
                start += ((now - start) // period) * period
        return start

    def period_at(self, profile, received, tx_start, t):
        """(period dict, unit) in force at time t, or None."""
        vf, vt = parse_time(profile.get("valid_from")), parse_time(profile.get("valid_to"))
        if (vf and t < vf) or (vt and t >= vt):
            return None
        sched = _schedule(profile)
        start = self._start(profile, received, tx_start, t)
        elapsed = (t - start).total_seconds()
        dur = sched.get("duration")
        if elapsed < 0 or (dur is not None and elapsed >= dur):
            return None
        cur = None
        for p in sched["charging_schedule_period"]:
            if p["start_period"] <= elapsed:
                cur = p
        return (cur, sched["charging_rate_unit"]) if cur else None

    def composite(self, t, tx_id, tx_start):
        """(tx-level period, unit, station-max period, unit) in force at t; None parts when absent."""
        best = {}
        for _pid, (p, received) in self.profiles.items():
            purpose = p.get("charging_profile_purpose")
            if purpose == "TxProfile" and (tx_id is None or p.get("transaction_id") not in (None, tx_id)):
                continue
            got = self.period_at(p, received, tx_start, t)
            if got is None:
                continue
            cur = best.get(purpose)
            if cur is None or p.get("stack_level", 0) > cur[0]:
                best[purpose] = (p.get("stack_level", 0), got)
        tx = best.get("TxProfile") or best.get("TxDefaultProfile")
        mx = best.get("ChargingStationMaxProfile")
        return (tx[1] if tx else None), (mx[1] if mx else None)

    def change_points(self, t0, t1, tx_start):
        """Times in (t0, t1) at which some profile's period may change."""
        pts = set()
        for p, received in self.profiles.values():
            sched = _schedule(p)
            first = self._start(p, received, tx_start, t0)
            repeats = 1
            step = timedelta(0)
            if p.get("charging_profile_kind") == "Recurring":
                step = timedelta(days=7 if p.get("recurrency_kind") == "Weekly" else 1)
                repeats = 8   # covers a week-long window of a daily profile
            for k in range(repeats):
                start = first + k * step
                for per in sched["charging_schedule_period"]:
                    pts.add(start + timedelta(seconds=per["start_period"]))
                if sched.get("duration") is not None:
                    pts.add(start + timedelta(seconds=sched["duration"]))
            for key in ("valid_from", "valid_to"):
                if p.get(key):
                    pts.add(parse_time(p[key]))
        return sorted(x for x in pts if t0 < x < t1)


def per_phase(period, base):
    """True when the period gives L2/L3 values for `base`: then `base` itself is phase L1
    only (OCPP 2.1), not the sum over the phases."""
    return period.get(base + "_l2") is not None or period.get(base + "_l3") is not None


def _mag(period, base):
    """Smallest magnitude over the phases of a (possibly per-phase) value, or None."""
    vals = [period.get(base), period.get(base + "_l2"), period.get(base + "_l3")]
    vals = [abs(v) for v in vals if v is not None]
    return min(vals) if vals else None


def to_amps(value, unit, volts, phases):
    """A per-phase current from `value` in `unit`. In W, `phases` is how many phases the
    value is spread over: the period's phase count for a total, 1 for a per-phase value."""
    if value is None:
        return None
    if unit == "W":
        return value / (max(volts, 1.0) * max(phases, 1))
    return value


def plan(tx, mx, version, volts=230.0, phases=1):
    """What the controller is told: {charge_a, discharge_a, direction}.

    charge_a/discharge_a None = no CSMS limit; direction 'discharge', 'charge', 'idle' or
    None (the app's SoC target stays in charge)."""
    charge_a = discharge_a = None
    direction = None
    if tx is not None:
        period, unit = tx
        n = period.get("number_phases") or phases

        def amps(v, base):
            # with L2/L3 given, a W value is one phase's power, not the sum of all phases
            return to_amps(v, unit, volts, 1 if per_phase(period, base) else n)

        mode = period.get("operation_mode")
        limit = period.get("limit")
        if mode == "Idle":
            charge_a, discharge_a, direction = 0.0, 0.0, "idle"
        elif mode == "CentralSetpoint":
            sp = period.get("setpoint")
            sp_mag = _mag(period, "setpoint")
            lim = amps(_mag(period, "limit"), "limit")
            dis = amps(_mag(period, "discharge_limit"), "discharge_limit")
            if sp is None or sp == 0:
                charge_a, discharge_a, direction = 0.0, 0.0, "idle"
            elif sp > 0:
                a = amps(sp_mag, "setpoint")
                charge_a, discharge_a, direction = (min(a, lim) if lim is not None else a), 0.0, "charge"
            else:
                a = amps(sp_mag, "setpoint")
                discharge_a = min(a, dis) if dis is not None else a
                charge_a, direction = 0.0, "discharge"
        elif mode == "ChargingOnly":
            charge_a = amps(_mag(period, "limit"), "limit") if limit is not None else None
            discharge_a = 0.0
        elif limit is not None and limit < 0:
            # 2.0.1 convention (and 2.1 without operationMode): negative = discharge
            charge_a, discharge_a, direction = 0.0, amps(_mag(period, "limit"), "limit"), "discharge"
        elif limit is not None:
            charge_a = amps(_mag(period, "limit"), "limit")
            if version == "2.1":
                dis = _mag(period, "discharge_limit")
                if dis is not None:
                    discharge_a = amps(dis, "discharge_limit")
    if mx is not None:
        period, unit = mx
        lim = period.get("limit")
        if lim is not None and lim >= 0:
            n = 1 if per_phase(period, "limit") else (period.get("number_phases") or phases)
            cap = to_amps(_mag(period, "limit"), unit, volts, n)
            charge_a = cap if charge_a is None else min(charge_a, cap)
    r = {"charge_a": _round(charge_a), "discharge_a": _round(discharge_a), "direction": direction}
    return r


def _round(a):
    return None if a is None else round(a, 1)
