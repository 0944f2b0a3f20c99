"""K SmartCharging: the CSMS's charging profiles (SetChargingProfile, ClearChargingProfile,
GetCompositeSchedule) become limits the controller is told (host link `limit`).

A profile is parsed and checked in full before anything changes, so a bad one is never
stored. The store in force changes only once the controller took its limits, except on
Clear: the CSMS's profiles are gone whatever the controller says, and the ticker sends
the limits again until the controller has them."""

import asyncio
import logging
from datetime import timedelta

from host_tools import link as hl
from host_tools.bridge import profiles as prof
from host_tools.bridge.ocpp.connection import on
from host_tools.bridge.ocpp.context import status_info, utcnow
from host_tools.bridge.ocpp.device_model import PERIODS_PER_SCHEDULE, PROFILE_ENTRIES, PROFILE_STACK_LEVEL

log = logging.getLogger(__name__)


class SmartCharging:
    def __init__(self, ctx, transactions):
        self.ctx = ctx
        self.transactions = transactions
        self.profiles = prof.ProfileStore()
        self.plan = None

    def transaction_ended(self, tx_id):
        self.profiles.end_transaction(tx_id)

    async def ticker(self):
        """Once a second: the limits of the profiles in force (they change with time)."""
        while True:
            await asyncio.sleep(1.0)
            if self.profiles.profiles or self.plan is not None:
                try:
                    await self.apply_profiles()
                except asyncio.CancelledError:
                    raise
                except Exception as e:   # noqa: BLE001 - the ticker must outlive a bad plan or link
                    log.exception("%s: profile ticker", self.ctx.id)
                    self.ctx.event("V2G-400", f"charging profile not applied: {type(e).__name__}: {e}")

    async def apply_profiles(self, store=None):
        """Tell the controller the limits of `store` (default: the profiles in force) and, once
        it took them, make `store` the profiles in force. (ok, message)."""
        store = self.profiles if store is None else store
        ctl = self.ctx.ctl
        tx, mx = store.composite(utcnow(), self.transactions.running, self.transactions.start_time)
        new = prof.plan(tx, mx, self.ctx.version or "2.0.1", ctl.volts, ctl.phases) \
            if (tx or mx) else None
        if new == self.plan:
            self.profiles = store
            return True, "unchanged"
        ok, msg = await ctl.apply_csms_plan(new)
        if ok:
            self.plan = new
            self.profiles = store
        return ok, msg

    @on("SetChargingProfile")
    async def on_set_charging_profile(self, evse_id, charging_profile, **_):
        if evse_id not in (0, 1):
            return {"status": "Rejected", "statusInfo": status_info("UnknownEvse", f"no EVSE {evse_id}")}
        purpose = charging_profile.get("charging_profile_purpose")
        tx_id = self.transactions.running
        if purpose == "TxProfile" and not tx_id:
            return {"status": "Rejected", "statusInfo": status_info("TxNotFound", "no transaction running")}
        if purpose == "ChargingStationMaxProfile" and evse_id != 0:
            return {"status": "Rejected", "statusInfo": status_info(
                "InvalidProfile", "ChargingStationMaxProfile needs evseId 0")}
        why = self._beyond_station(charging_profile)
        if why is not None:
            self.ctx.event("V2G-400", f"charging profile {charging_profile.get('id')} rejected: {why[1]}")
            return {"status": "Rejected", "statusInfo": status_info(*why)}
        try:
            # parsed and checked in full before anything changes: a bad profile is never stored
            store = self.profiles.with_profile(charging_profile, utcnow(), self.ctx.version or "2.0.1")
        except prof.ProfileError as e:
            self.ctx.event("V2G-400", f"charging profile {charging_profile.get('id')} rejected: {e}")
            return {"status": "Rejected", "statusInfo": status_info(e.reason, e)}
        if purpose == "TxProfile" and store.profiles[charging_profile["id"]][0].get("transaction_id") \
                not in (None, tx_id):
            return {"status": "Rejected", "statusInfo": status_info(
                "TxNotFound", f"transactionId {charging_profile.get('transaction_id')} is not the running one")}
        try:
            ok, msg = await self.apply_profiles(store)
        except hl.LinkError as e:
            ok, msg = False, str(e)
        if not ok:
            self.ctx.event("V2G-400", f"charging profile {charging_profile.get('id')} refused "
                           f"by the controller: {msg}")
            return {"status": "Rejected", "statusInfo": status_info("InvalidValue", msg)}
        return {"status": "Accepted"}

    def _beyond_station(self, cp):
        """(reason, why) when a profile asks more than the station advertises
        (SmartChargingCtrlr.PeriodsPerSchedule, ProfileStackLevel, Entries), else None."""
        for i, sched in enumerate(cp.get("charging_schedule") or []):
            n = len(sched.get("charging_schedule_period") or [])
            if n > PERIODS_PER_SCHEDULE:
                return ("InvalidSchedule", f"chargingProfile.chargingSchedule[{i}].chargingSchedulePeriod: {n} "
                        f"periods, SmartChargingCtrlr.PeriodsPerSchedule is {PERIODS_PER_SCHEDULE}")
        if cp.get("stack_level", 0) > PROFILE_STACK_LEVEL:
            return ("InvalidStackLevel", f"chargingProfile.stackLevel: {cp.get('stack_level')} is above "
                    f"SmartChargingCtrlr.ProfileStackLevel {PROFILE_STACK_LEVEL}")
        if cp.get("id") not in self.profiles.profiles and len(self.profiles.profiles) >= PROFILE_ENTRIES:
            return ("TooManyProfiles", f"{len(self.profiles.profiles)} profiles installed, "
                    f"SmartChargingCtrlr.Entries[ChargingProfiles] is {PROFILE_ENTRIES}")
        return None

    @on("ClearChargingProfile")
    async def on_clear_charging_profile(self, charging_profile_id=None, charging_profile_criteria=None, **_):
        c = charging_profile_criteria or {}
        store, n = self.profiles.without(charging_profile_id, c.get("charging_profile_purpose"),
                                         c.get("stack_level"))
        if n:
            # the CSMS's profiles are gone whatever the controller says now: the store changes at
            # once and the profile ticker sends the limits again until the controller has them
            self.profiles = store
            try:
                ok, msg = await self.apply_profiles(store)
            except hl.LinkError as e:
                ok, msg = False, str(e)
            if not ok:
                self.ctx.event("V2G-400", f"limits after ClearChargingProfile not applied yet: {msg}")
        return {"status": "Accepted" if n else "Unknown"}

    @on("GetCompositeSchedule")
    def on_get_composite_schedule(self, duration, evse_id, charging_rate_unit=None, **_):
        if evse_id not in (0, 1):
            return {"status": "Rejected", "statusInfo": status_info("UnknownEvse", f"no EVSE {evse_id}")}
        unit = charging_rate_unit or "A"
        now = utcnow()
        end = now + timedelta(seconds=duration)
        tx_id, tx_start = self.transactions.running, self.transactions.start_time
        periods = []
        for t in [now] + self.profiles.change_points(now, end, tx_start):
            tx, mx = self.profiles.composite(t, tx_id, tx_start)
            p = self.composite_period(tx, mx, unit)
            p["startPeriod"] = int((t - now).total_seconds())
            if not periods or {k: v for k, v in periods[-1].items() if k != "startPeriod"} != \
                    {k: v for k, v in p.items() if k != "startPeriod"}:
                periods.append(p)
        sched = {"evseId": evse_id, "duration": duration, "scheduleStart": prof.iso(now),
                 "chargingRateUnit": unit, "chargingSchedulePeriod": periods}
        return {"status": "Accepted", "schedule": sched}

    def composite_period(self, tx, mx, unit):
        """One composite period in `unit`. Keeps the 2.1 fields (operationMode, setpoint,
        dischargeLimit and their per-phase values) of the profile in force."""
        ctl, version = self.ctx.ctl, self.ctx.version
        volts, phases = ctl.volts, ctl.phases

        def conv(v, from_unit, n):
            if v is None or from_unit == unit:
                return v
            f = volts * n
            return round(v / f, 1) if unit == "A" else round(v * f, 1)

        out = {}
        if tx is not None:
            period, u = tx
            n = period.get("number_phases") or phases
            for key, camel in (("limit", "limit"), ("limit_l2", "limitL2"), ("limit_l3", "limitL3"),
                               ("setpoint", "setpoint"), ("setpoint_l2", "setpointL2"),
                               ("setpoint_l3", "setpointL3"), ("discharge_limit", "dischargeLimit"),
                               ("discharge_limit_l2", "dischargeLimitL2"),
                               ("discharge_limit_l3", "dischargeLimitL3")):
                if period.get(key) is not None and (version == "2.1" or key == "limit"):
                    base = key.rsplit("_l", 1)[0] if key.endswith(("_l2", "_l3")) else key
                    # with L2/L3 values, each value (L1 included) is one phase's, not the sum
                    out[camel] = conv(period[key], u, 1 if prof.per_phase(period, base) else n)
            if version == "2.1" and period.get("operation_mode"):
                out["operationMode"] = period["operation_mode"]
            if period.get("number_phases"):
                out["numberPhases"] = period["number_phases"]
        if mx is not None:
            period, u = mx
            cap = conv(period.get("limit"), u, 1 if prof.per_phase(period, "limit")
                       else (period.get("number_phases") or phases))
            if cap is not None and (out.get("limit") is None or out["limit"] > cap):
                out["limit"] = cap
        if "limit" not in out and version == "2.0.1":
            out["limit"] = conv(ctl.max_charge_a, "A", phases)
        # the controller never goes beyond its own ceilings (MAX_CHARGE_AMPS, MAX_DISCHARGE_AMPS):
        # the schedule says what it will do, not what was asked
        top = conv(getattr(ctl, "max_charge_a", None), "A", phases)
        bottom = conv(getattr(ctl, "max_discharge_a", None), "A", phases)
        for key in ("limit", "limitL2", "limitL3", "setpoint", "setpointL2", "setpointL3"):
            v = out.get(key)
            if v is None:
                continue
            if top is not None and v > top:
                out[key] = top
            if bottom is not None and v < -bottom:
                out[key] = -bottom
        for key in ("dischargeLimit", "dischargeLimitL2", "dischargeLimitL3"):
            v = out.get(key)
            if v is not None and bottom is not None and abs(v) > bottom:
                out[key] = -bottom if v < 0 else bottom
        return out
