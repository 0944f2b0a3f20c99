"""SmartCharging: SetChargingProfile, ClearChargingProfile, GetCompositeSchedule with
ChargePointMaxProfile, TxDefaultProfile and TxProfile.

A 1.6 profile is read into the shape of host_tools.bridge.profiles (the 2.0.1 one: the
same checks, selection and composite schedule) and checked in full before anything
changes. OCPP 1.6 has no discharge: a negative limit is Rejected (V2G-302 in the central
log), and every plan the controller is told carries a discharge limit of 0 from the CSMS,
so the controller stays charge-only while the CSMS speaks 1.6 (the app's status says why)."""

import asyncio
import logging
import random
from datetime import timedelta

from host_tools import link as hl
from host_tools.bridge import profiles as prof
from host_tools.bridge.ocpp.context import utcnow
from host_tools.bridge.ocpp16.connection import on, plain_numbers

log = logging.getLogger(__name__)

NO_DISCHARGE = "V2G-302"
NO_DISCHARGE_WHY = "the CSMS speaks OCPP 1.6: discharge needs 2.0.1 or later"
PURPOSE = {"ChargePointMaxProfile": "ChargingStationMaxProfile", "TxDefaultProfile": "TxDefaultProfile",
           "TxProfile": "TxProfile"}
UNITS = {"A": "A", "W": "W"}


def _where_16(msg):
    """A profiles.py message in the 1.6 field names."""
    return (str(msg).replace("chargingProfile.id:", "csChargingProfiles.chargingProfileId:")
            .replace("chargingProfile.", "csChargingProfiles.").replace("chargingSchedule[0]", "chargingSchedule")
            .replace("ChargingStationMaxProfile", "ChargePointMaxProfile"))


def from_16(p, tx_key=None):
    """A 1.6 csChargingProfiles (snake_case) as a validated profiles.py profile; ProfileError
    (message in 1.6 names) when the station cannot follow it."""
    p = plain_numbers(p)
    if not isinstance(p, dict) or not isinstance(p.get("charging_schedule"), dict):
        raise prof.ProfileError("InvalidProfile", "csChargingProfiles.chargingSchedule: must be an object")
    for i, period in enumerate(p["charging_schedule"].get("charging_schedule_period") or []):
        lim = period.get("limit") if isinstance(period, dict) else None
        if isinstance(lim, (int, float)) and lim < 0:
            raise prof.ProfileError("InvalidValue", f"csChargingProfiles.chargingSchedule.chargingSchedulePeriod"
                                    f"[{i}].limit: {lim} < 0 asks for discharge: {NO_DISCHARGE_WHY}")
    out = {k: v for k, v in p.items() if k not in ("charging_profile_id", "transaction_id", "charging_schedule")}
    out["id"] = p.get("charging_profile_id")
    out["charging_profile_purpose"] = PURPOSE.get(p.get("charging_profile_purpose"), p.get("charging_profile_purpose"))
    out["charging_schedule"] = [p["charging_schedule"]]
    if tx_key is not None:
        out["transaction_id"] = tx_key
    try:
        return prof.validate_profile(out, "2.0.1")
    except prof.ProfileError as e:
        raise prof.ProfileError(e.reason, _where_16(e)) from None


class SmartCharging:
    def __init__(self, ctx, transactions, config):
        self.ctx = ctx
        self.transactions = transactions
        self.config = config
        self.profiles = prof.ProfileStore()
        self.plan = None

    def checked(self, profile):
        return from_16(profile)

    def transaction_started(self, local, profile):
        """A RemoteStartTransaction's TxProfile becomes the new transaction's."""
        if profile is not None:
            new = prof.ProfileStore(self.profiles.profiles)
            new.profiles[profile["id"]] = (dict(profile, transaction_id=local), utcnow())
            self.profiles = new
            asyncio.ensure_future(self._apply_logged())

    def transaction_ended(self, local):
        self.profiles.end_transaction(local)

    def _plan(self, store):
        ctl = self.ctx.ctl
        tx, mx = store.composite(utcnow(), self.transactions.running, self.transactions.start_time)
        p = prof.plan(tx, mx, "2.0.1", ctl.volts, ctl.phases) if (tx or mx) else \
            {"charge_a": None, "discharge_a": None, "direction": None}
        # 1.6 has no discharge: the CSMS's discharge limit is 0, always
        return dict(p, discharge_a=0.0, direction=None)

    async def apply_profiles(self, store=None, force=False):
        store = self.profiles if store is None else store
        new = self._plan(store)
        if new == self.plan and not force:
            self.profiles = store
            return True, "unchanged"
        ok, msg = await self.ctx.ctl.apply_csms_plan(new)
        if ok:
            self.plan = new
            self.profiles = store
        return ok, msg

    async def _apply_logged(self, force=False):
        try:
            ok, msg = await self.apply_profiles(force=force)
        except hl.LinkError as e:
            ok, msg = False, str(e)
        if not ok:
            log.info("%s: limits not applied yet: %s", self.ctx.id, msg)
        return ok

    async def charge_only(self):
        """Tell the controller now (session start, controller back): no discharge from this CSMS."""
        self.plan = None
        await self._apply_logged(force=True)

    async def ticker(self):
        """Once a second: the limits of the profiles in force (they change with time), and
        again until the controller has them. With no profile and the charge-only plan taken
        there is nothing to do; the first wait is random so that a site's tickers (all started
        as the gateway connects) do not all run in the same instant."""
        await asyncio.sleep(random.random())
        while True:
            await asyncio.sleep(1.0)
            if not self.profiles.profiles and self.plan is not None:
                continue
            try:
                await self.apply_profiles()
            except asyncio.CancelledError:
                raise
            except hl.LinkError:
                pass
            except Exception as e:  # noqa: BLE001 - the ticker must outlive a bad plan or link
                log.exception("%s: profile ticker", self.ctx.id)
                self.ctx.event("V2G-400", f"charging profile not applied: {type(e).__name__}: {e}")

    @on("SetChargingProfile")
    async def on_set_charging_profile(self, connector_id, cs_charging_profiles, **_):
        p = plain_numbers(cs_charging_profiles)
        purpose = p.get("charging_profile_purpose")
        tx = self.transactions
        if connector_id not in (0, 1) or (purpose == "ChargePointMaxProfile" and connector_id != 0):
            return {"status": "Rejected"}
        tx_key = None
        if purpose == "TxProfile":
            if connector_id != 1 or not tx.running or p.get("transaction_id") not in (None, tx.transaction_id):
                return {"status": "Rejected"}
            tx_key = tx.running
        if p.get("stack_level", 0) > self.config["ChargeProfileMaxStackLevel"]:
            return {"status": "Rejected"}
        try:
            profile = from_16(p, tx_key)
        except prof.ProfileError as e:
            code = NO_DISCHARGE if NO_DISCHARGE_WHY in str(e) else "V2G-400"
            self.ctx.event(code, f"charging profile {p.get('charging_profile_id')} rejected: {e}")
            return {"status": "Rejected"}
        store = prof.ProfileStore(self.profiles.profiles)
        store.profiles[profile["id"]] = (profile, utcnow())
        if len(store.profiles) > self.config["MaxChargingProfilesInstalled"]:
            return {"status": "Rejected"}
        try:
            ok, msg = await self.apply_profiles(store)
        except hl.LinkError as e:
            ok, msg = False, str(e)
        if not ok:
            self.ctx.event("V2G-400", f"charging profile {profile['id']} refused by the controller: {msg}")
            return {"status": "Rejected"}
        return {"status": "Accepted"}

    @on("ClearChargingProfile")
    async def on_clear_charging_profile(self, id=None, connector_id=None, charging_profile_purpose=None,  # noqa: A002
                                        stack_level=None, **_):
        store, n = self.profiles.without(id, PURPOSE.get(charging_profile_purpose), stack_level)
        if n:
            self.profiles = store       # gone whatever the controller says; the ticker retries
            await self._apply_logged()
        return {"status": "Accepted" if n else "Unknown"}

    @on("GetCompositeSchedule")
    def on_get_composite_schedule(self, connector_id, duration, charging_rate_unit=None, **_):
        if connector_id not in (0, 1):
            return {"status": "Rejected"}
        unit = charging_rate_unit or "A"
        now = utcnow()
        end = now + timedelta(seconds=duration)
        tx_key, tx_start = self.transactions.running, self.transactions.start_time
        periods = []
        for t in [now] + self.profiles.change_points(now, end, tx_start):
            tx, mx = self.profiles.composite(t, tx_key, tx_start)
            p = {"startPeriod": int((t - now).total_seconds()), "limit": self._limit(tx, mx, unit)}
            if not periods or periods[-1]["limit"] != p["limit"]:
                periods.append(p)
        return {"status": "Accepted", "connectorId": connector_id, "scheduleStart": prof.iso(now),
                "chargingSchedule": {"duration": duration, "startSchedule": prof.iso(now),
                                     "chargingRateUnit": unit, "chargingSchedulePeriod": periods}}

    def _limit(self, tx, mx, unit):
        """The limit in force in `unit` (the controller's maximum when no profile limits it)."""
        ctl = self.ctx.ctl
        amps = []
        for part in (tx, mx):
            if part is not None:
                period, u = part
                n = period.get("number_phases") or ctl.phases
                amps.append(prof.to_amps(period["limit"], u, ctl.volts, n))
        a = min(amps) if amps else ctl.max_charge_a
        v = a if unit == "A" else a * ctl.volts * ctl.phases
        return round(v, 1)
