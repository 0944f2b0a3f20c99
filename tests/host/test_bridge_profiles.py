"""Charging profiles: every field is parsed and checked before a profile is stored, so no
stored profile can make a later SetChargingProfile, ClearChargingProfile or composite
schedule fail. Against the tests' CSMS (the `ocpp` package) with the bridge's OCPP station
in this process and a controller that records the limits it is told."""

import asyncio
from datetime import datetime, timedelta, timezone

import pytest
from ocpp.v201 import call
from ocpp_csms import Csms

from host_tools.bridge import profiles as P
from host_tools.bridge.ocpp import OcppStation
from host_tools.link import CommandResult

STATION = "CS-PROF"


class _Log:
    def __init__(self):
        self.lines = []

    def event(self, station, code, msg):
        self.lines.append((code, msg))


class Controller:
    """The controller facade: records each CSMS plan it is told and takes it."""

    fw, serial, fota = "0.1.0", "sim-CS-PROF", None
    volts, phases, max_charge_a = 230.0, 1, 32.0

    def __init__(self):
        self.sample = {"cp": "A", "mode": "idle"}
        self.plans = []
        self.plan_seen = asyncio.Event()

    async def wait_ready(self, timeout):
        return None

    async def command(self, op, args):
        return CommandResult("t", True, None, "ok", {})

    async def apply_csms_plan(self, plan):
        self.plans.append(plan)
        return True, "ok"


def _profile(pid, limit, stack_level=0, **extra):
    return {"id": pid, "stack_level": stack_level, "charging_profile_purpose": "TxDefaultProfile",
            "charging_profile_kind": "Relative", **extra,
            "charging_schedule": [{"id": 1, "charging_rate_unit": "A",
                                   "charging_schedule_period": [{"start_period": 0, "limit": limit}]}]}


@pytest.fixture()
def rig(tmp_path):
    csms = Csms(versions=("ocpp2.0.1",)).start()
    ctl = Controller()
    st = OcppStation(STATION, csms.url, ctl, tmp_path / "ocpp", _Log(), max_version="2.0.1")
    yield csms, st, ctl
    csms.close()


def _run(csms, st, steps):
    """Run the station on this thread's loop and the CSMS's requests beside it."""
    async def go():
        task = asyncio.ensure_future(st.run())
        try:
            await asyncio.wait_for(st.connected.wait(), 20)
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(None, steps)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    return asyncio.run(go())


def test_a_bad_profile_is_refused_unstored_and_the_csms_keeps_control_of_discharge(rig):
    csms, st, ctl = rig

    def set_profile(p):
        return csms.request(STATION, call.SetChargingProfile(evse_id=1, charging_profile=p))

    def steps():
        # 1. TxDefault at -10 A: discharge at up to 10 A
        kind, res = set_profile(_profile(1, -10.0))
        assert (kind, res["status"]) == ("result", "Accepted"), res
        assert ctl.plans[-1] == {"charge_a": 0.0, "discharge_a": 10.0, "direction": "discharge"}
        # 2. a second profile whose validTo is no date-time: refused naming the field, never stored
        kind, desc = set_profile(_profile(2, 16.0, stack_level=1, valid_to="zzz"))
        assert kind == "TypeConstraintViolation" and "chargingProfile.validTo" in desc and "zzz" in desc
        # a profile the schema lets through but the station cannot follow: Rejected with the field
        kind, res = set_profile(_profile(3, 16.0, stack_level=2, valid_from="2030-01-02T00:00:00Z",
                                         valid_to="2030-01-01T00:00:00Z"))
        assert res["status"] == "Rejected", res
        assert res["statusInfo"]["reasonCode"] == "InvalidProfile"
        assert "chargingProfile.validTo" in res["statusInfo"]["additionalInfo"]
        assert sorted(st.smart_charging.profiles.profiles) == [1]
        # 3. replacing the first profile with 0 A works: discharge is no longer asked for
        kind, res = set_profile(_profile(1, 0.0))
        assert (kind, res["status"]) == ("result", "Accepted"), res
        assert ctl.plans[-1]["discharge_a"] in (None, 0.0) and ctl.plans[-1]["direction"] != "discharge"
        kind, res = csms.request(STATION, call.GetCompositeSchedule(duration=600, evse_id=1))
        assert res["status"] == "Accepted" and res["schedule"]["chargingSchedulePeriod"][0]["limit"] == 0.0
        # 4. clearing it works: the controller is told there is no CSMS limit any more
        kind, res = set_profile(_profile(1, -10.0))
        assert res["status"] == "Accepted" and ctl.plans[-1]["direction"] == "discharge"
        kind, res = csms.request(STATION, call.ClearChargingProfile(charging_profile_id=1))
        assert (kind, res["status"]) == ("result", "Accepted"), res
        assert ctl.plans[-1] is None and st.smart_charging.profiles.profiles == {}
    _run(csms, st, steps)


BAD_FIELDS = [
    ({"valid_from": "2026-13-01T00:00:00Z"}, "InvalidValue", "chargingProfile.validFrom"),
    ({"valid_to": "tomorrow"}, "InvalidValue", "chargingProfile.validTo"),
    ({"valid_to": "2026-01-01"}, "InvalidValue", "chargingProfile.validTo"),            # a date, no time
    ({"stack_level": -1}, "InvalidValue", "chargingProfile.stackLevel"),
    ({"stack_level": True}, "InvalidValue", "chargingProfile.stackLevel"),
    ({"id": "7"}, "InvalidValue", "chargingProfile.id"),
    ({"charging_profile_kind": "Dynamic"}, "UnsupportedKind", "chargingProfile.chargingProfileKind"),
    ({"charging_profile_kind": "Recurring", "recurrency_kind": "Hourly"}, "InvalidProfile",
     "chargingProfile.recurrencyKind"),
    ({"transaction_id": ""}, "InvalidValue", "chargingProfile.transactionId"),
]
BAD_SCHEDULE = [
    ({"start_schedule": "zzz"}, "InvalidValue", "chargingSchedule[0].startSchedule"),
    ({"duration": -5}, "InvalidValue", "chargingSchedule[0].duration"),
    ({"duration": 1.5}, "InvalidValue", "chargingSchedule[0].duration"),
    ({"charging_rate_unit": "kW"}, "UnsupportedRateUnit", "chargingSchedule[0].chargingRateUnit"),
    ({"min_charging_rate": float("nan")}, "InvalidValue", "chargingSchedule[0].minChargingRate"),
    ({"charging_schedule_period": []}, "InvalidSchedule", "chargingSchedule[0].chargingSchedulePeriod"),
]
BAD_PERIOD = [
    ({"limit": float("inf")}, "InvalidValue", "chargingSchedulePeriod[0].limit"),
    ({"limit": "10"}, "InvalidValue", "chargingSchedulePeriod[0].limit"),
    ({"limit": None}, "InvalidSchedule", "chargingSchedulePeriod[0].limit"),               # 2.0.1 needs it
    ({"limit_l2": float("nan")}, "InvalidValue", "chargingSchedulePeriod[0].limit_L2"),
    ({"number_phases": 4}, "InvalidValue", "chargingSchedulePeriod[0].numberPhases"),
    ({"start_period": -1}, "InvalidValue", "chargingSchedulePeriod[0].startPeriod"),
    ({"start_period": 5}, "InvalidSchedule", "startPeriod must start at 0"),
]


@pytest.mark.parametrize("change,reason,field", BAD_FIELDS + [
    ({"charging_schedule": [{**_profile(0, 1.0)["charging_schedule"][0], **c}]}, r, f) for c, r, f in BAD_SCHEDULE
] + [
    ({"charging_schedule": [{"charging_rate_unit": "A", "charging_schedule_period": [{"start_period": 0,
                                                                                       "limit": 6.0, **c}]}]},
     r, f) for c, r, f in BAD_PERIOD
])
def test_every_field_is_checked_before_the_store_changes(change, reason, field):
    store = P.ProfileStore()
    t0 = datetime(2026, 1, 1, 12, tzinfo=timezone.utc)
    store.set(_profile(1, -10.0), t0, "2.0.1")
    before = dict(store.profiles)
    with pytest.raises(P.ProfileError) as e:
        store.set({**_profile(2, 6.0, stack_level=1), **change}, t0, "2.0.1")
    assert e.value.reason == reason and field in str(e.value)
    assert store.profiles == before
    # the store still answers: composite, change points, clearing
    assert store.composite(t0, None, None)[0][0]["limit"] == -10.0
    store.change_points(t0, t0 + timedelta(hours=1), None)
    assert store.clear(1) == 1 and store.composite(t0, None, None) == (None, None)


def test_stored_profiles_hold_parsed_times():
    store = P.ProfileStore()
    t0 = datetime(2026, 1, 1, 12, tzinfo=timezone.utc)
    store.set(_profile(1, 8.0, valid_to="2026-01-01T13:00:00.123456789Z"), t0, "2.0.1")
    stored, _ = store.profiles[1]
    assert stored["valid_to"] == datetime(2026, 1, 1, 13, 0, 0, 123456, tzinfo=timezone.utc)
    assert store.composite(t0 + timedelta(minutes=59), None, None)[0][0]["limit"] == 8.0
    assert store.composite(t0 + timedelta(minutes=61), None, None) == (None, None)
