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

from datetime import datetime, timedelta, timezone

SUPPORTED_MODES = ("ChargingOnly", "CentralSetpoint", "Idle")
PURPOSES = ("ChargingStationMaxProfile", "TxDefaultProfile", "TxProfile")


class ProfileError(ValueError):
    """A profile the station cannot follow; the message says why (reasonCode in .reason)."""

    def __init__(self, reason, msg):
        super().__init__(msg)
        self.reason = reason


def parse_time(s):
    if s is None:
        return None
    if isinstance(s, datetime):
        return s
    s = s.strip()
    if s.endswith("Z"):
        s = s[:-1] + "+00:00"
    dt = datetime.fromisoformat(s)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt


def iso(dt):
    return dt.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _schedule(profile):
    s = profile["charging_schedule"]
    return s[0] if isinstance(s, list) else s


def check_profile(profile, version):
    """Raise ProfileError when the station cannot follow this profile."""
    purpose = profile.get("charging_profile_purpose")
    if purpose not in PURPOSES:
        raise ProfileError("UnsupportedPurpose", f"charging profile purpose {purpose} is not supported")
    sched = _schedule(profile)
    if sched.get("charging_rate_unit") not in ("A", "W"):
        raise ProfileError("InvalidSchedule", "chargingRateUnit must be A or W")
    periods = sched.get("charging_schedule_period") or []
    if not periods:
        raise ProfileError("InvalidSchedule", "no charging schedule period")
    starts = [p["start_period"] for p in periods]
    if starts[0] != 0 or starts != sorted(set(starts)):
        raise ProfileError("InvalidSchedule", "startPeriod must start at 0 and increase")
    for p in periods:
        mode = p.get("operation_mode")
        if mode is not None and mode not in SUPPORTED_MODES:
            raise ProfileError("UnsupportedOperationMode",
                               f"operationMode {mode} is not supported (supported: {', '.join(SUPPORTED_MODES)})")
        if version == "2.0.1" and p.get("limit") is None:
            raise ProfileError("InvalidSchedule", "period without limit")
    kind = profile.get("charging_profile_kind")
    if kind == "Absolute" and not sched.get("start_schedule"):
        raise ProfileError("InvalidSchedule", "an Absolute profile needs startSchedule")


class ProfileStore:
    def __init__(self):
        self.profiles = {}       # id -> (profile dict, time received)

    def set(self, profile, now):
        self.profiles[profile["id"]] = (profile, now)

    def clear(self, profile_id=None, purpose=None, stack_level=None):
        """Remove matching profiles; returns how many went."""
        gone = []
        for pid, (p, _) in self.profiles.items():
            if profile_id is not None and pid != profile_id:
                continue
            if purpose is not None and p.get("charging_profile_purpose") != purpose:
                continue
            if stack_level is not None and p.get("stack_level") != stack_level:
                continue
            gone.append(pid)
        for pid in gone:
            del self.profiles[pid]
        return len(gone)

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
