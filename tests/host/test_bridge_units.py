"""Bridge parts without a board: back-off, offline queue, tokens, variables, profiles,
the per-phase key workaround for `ocpp` 2.1.0, the config directory checks."""

import asyncio
import base64
import hashlib
import hmac
import json
import os
import random
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from ocpp.charge_point import remove_nones, serialize_as_dict, snake_to_camel_case
from ocpp.exceptions import OCPPError
from ocpp.messages import Call, validate_payload
from ocpp.v21 import call as call21
from ocpp.v21 import datatypes as dt21

from host_tools.bridge import profiles as P
from host_tools.bridge import variables as V
from host_tools.bridge.auth import AuthError, TokenVerifier
from host_tools.bridge.backoff import Backoff
from host_tools.bridge.config import ConfigDirError, check_config_dir
from host_tools.bridge.ocpp.connection import fix_phase_keys, to_payload
from host_tools.bridge.queue import DiskQueue

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ---------------------------------------------------------------- back-off

def test_backoff_doubles_to_the_repeat_limit_with_a_random_share():
    b = Backoff(3, 10, 3, rng=random.Random(1))
    waits = [b.next() for _ in range(6)]
    for n, w in enumerate(waits):
        base = 3 * 2 ** min(n, 3)
        assert base <= w <= base + 10
    assert len({round(w, 6) for w in waits}) == 6     # randomised: no two stations in step
    b.reset()
    assert 3 <= b.next() <= 13
    with pytest.raises(ValueError):
        Backoff(-1, 0, 0)


# ---------------------------------------------------------------- queue

def test_queue_keeps_order_across_a_restart_and_drops_half_written_files(tmp_path):
    q = DiskQueue(tmp_path / "q")
    for i in range(5):
        q.put({"seqNo": i})
    n, first = q.peek()
    q.pop(n)
    (tmp_path / "q" / "999999999999.tmp").write_text('{"seqNo": 9')   # a crash mid-write
    q2 = DiskQueue(tmp_path / "q")                                      # the bridge restarts
    assert [m["seqNo"] for m in q2.items()] == [1, 2, 3, 4]
    assert not list((tmp_path / "q").glob("*.tmp"))
    q2.put({"seqNo": 5})
    assert [m["seqNo"] for m in q2.items()] == [1, 2, 3, 4, 5]
    assert first == {"seqNo": 0}


def test_queue_sets_a_damaged_file_aside_and_bounds_its_size(tmp_path):
    q = DiskQueue(tmp_path / "q", max_items=3)
    for i in range(5):
        q.put({"i": i})
    assert [m["i"] for m in q.items()] == [2, 3, 4] and q.dropped == 2
    head = sorted((tmp_path / "q").glob("*.json"))[0]
    head.write_text("{not json")
    n, m = q.peek()
    assert m == {"i": 3} and list((tmp_path / "q").glob("*.bad"))


def test_a_full_offline_queue_logs_and_counts_each_dropped_event(tmp_path):
    st = _station(tmp_path)
    st.transactions.queue.max_items = 2
    for i in range(4):
        st.transactions.queue.put({"eventType": "Updated", "seqNo": i, "transactionInfo": {"transactionId": "tx-1"}})
    assert [m["seqNo"] for m in st.transactions.queue.items()] == [2, 3]
    assert st.ctx.counters["tx_events_dropped"] == 2 and st.transactions.queue.dropped == 2
    lines = [(c, m) for c, m in st.ctx.clog.lines if c == "ERR_V2G_TX_QUEUE_FULL"]
    assert len(lines) == 2
    assert "seqNo 0 of tx-1" in lines[0][1] and "2 dropped so far" in lines[1][1]


# ---------------------------------------------------------------- tokens

def test_hs256_tokens_missing_expired_wrong_key_wrong_station_alg_none():
    v = TokenVerifier("s3cret-s3cret-s3cret-s3cret-s3cret", "HS256", "CS1")
    good = jwt.encode({"exp": time.time() + 60, "aud": "CS1", "sub": "u"}, v.key, algorithm="HS256")
    assert v.verify(good)["sub"] == "u"
    bad = {
        "missing": None,
        "expired": jwt.encode({"exp": time.time() - 60, "aud": "CS1"}, v.key, algorithm="HS256"),
        "signature": jwt.encode({"exp": time.time() + 60, "aud": "CS1"}, "x" * 34, algorithm="HS256"),
        "station": jwt.encode({"exp": time.time() + 60, "aud": "CS2"}, v.key, algorithm="HS256"),
        "exp": jwt.encode({"aud": "CS1"}, v.key, algorithm="HS256"),
        "refused": jwt.encode({"exp": time.time() + 60, "aud": "CS1"}, None, algorithm="none"),
    }
    for why, tok in bad.items():
        with pytest.raises(AuthError) as e:
            v.verify(tok)
        assert why in str(e.value), (why, str(e.value))
        assert e.value.code == "V2G-401"


def test_es256_tokens_from_the_config_dir(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "app_jwt_public.pem").write_bytes(pub)
    v = TokenVerifier.from_config_dir(tmp_path, "CS1")
    assert v.algorithm == "ES256"
    tok = jwt.encode({"exp": time.time() + 60, "aud": "CS1"}, key, algorithm="ES256")
    assert v.verify(tok)["aud"] == "CS1"
    # an HS256 token "signed" with the public key text is not accepted (algorithm confusion)
    seg = [base64.urlsafe_b64encode(x).rstrip(b"=") for x in (b'{"alg":"HS256","typ":"JWT"}',
                                                               b'{"aud":"CS1","exp":9999999999}')]
    sig = base64.urlsafe_b64encode(hmac.new(pub, b".".join(seg), hashlib.sha256).digest()).rstrip(b"=")
    forged = b".".join(seg + [sig]).decode()
    with pytest.raises(AuthError):
        v.verify(forged)


# ---------------------------------------------------------------- variables

def test_variable_values_parse_as_the_current_type():
    assert V.from_text("true", False) is True and V.from_text("16", 32) == 16
    assert V.from_text("16.5", 32) == 16.5 and V.from_text("null", None) is None
    assert V.from_text("1", None) == 1 and V.from_text("EN50549_50HZ", "X") == "EN50549_50HZ"
    for text, cur in (("yes", True), ("lots", 3), ("nan", 1.0), ("inf", 2)):
        with pytest.raises(ValueError):
            V.from_text(text, cur)
    entries = V.report_entries({"MAX_CHARGE_AMPS": 32, "VENTILATION_AVAILABLE": False}, {("ChargingStation", "Model"): "m"})
    assert [e["variableCharacteristics"]["dataType"] for e in entries] == ["integer", "boolean", "string"]
    assert entries[2]["variableAttribute"][0]["mutability"] == "ReadOnly"


# ---------------------------------------------------------------- profiles

def _period(**kw):
    return ({"start_period": 0, **kw}, "A")


def test_plan_201_negative_limit_is_discharge_positive_is_a_charge_cap():
    assert P.plan(_period(limit=-16.0), None, "2.0.1") == {"charge_a": 0.0, "discharge_a": 16.0,
                                                          "direction": "discharge"}
    assert P.plan(_period(limit=10.0), None, "2.0.1") == {"charge_a": 10.0, "discharge_a": None, "direction": None}
    # W -> A with the controller's voltage and phases; a station max profile caps charging
    p = P.plan(({"start_period": 0, "limit": 6900.0}, "W"), _period(limit=8.0), "2.0.1", volts=230, phases=3)
    assert p["charge_a"] == 8.0


def test_plan_21_operation_modes_and_per_phase_limits():
    sp = _period(operation_mode="CentralSetpoint", setpoint=-20.0, discharge_limit=-16.0,
                 discharge_limit_l2=-12.0, discharge_limit_l3=-14.0)
    assert P.plan(sp, None, "2.1") == {"charge_a": 0.0, "discharge_a": 12.0, "direction": "discharge"}
    assert P.plan(_period(operation_mode="CentralSetpoint", setpoint=8.0, limit=6.0), None, "2.1")["charge_a"] == 6.0
    assert P.plan(_period(operation_mode="Idle"), None, "2.1") == {"charge_a": 0.0, "discharge_a": 0.0,
                                                                   "direction": "idle"}
    assert P.plan(_period(operation_mode="ChargingOnly", limit=20.0), None, "2.1")["discharge_a"] == 0.0
    with pytest.raises(P.ProfileError) as e:
        P.check_profile({"id": 1, "stack_level": 0, "charging_profile_purpose": "TxProfile",
                         "charging_profile_kind": "Relative",
                         "charging_schedule": [{"charging_rate_unit": "A", "charging_schedule_period": [
                             {"start_period": 0, "operation_mode": "LocalFrequency"}]}]}, "2.1")
    assert e.value.reason == "UnsupportedOperationMode"


def test_plan_in_watts_per_phase_values_are_one_phase_each():
    # 2300 W on each of 3 phases at 230 V is 10 A per phase, not 2300 / (230 x 3)
    per = ({"start_period": 0, "limit": 2300.0, "limit_l2": 2300.0, "limit_l3": 2300.0}, "W")
    assert P.plan(per, None, "2.1", volts=230, phases=3)["charge_a"] == 10.0
    # without L2/L3 the value is the sum over the phases
    total = ({"start_period": 0, "limit": 6900.0}, "W")
    assert P.plan(total, None, "2.1", volts=230, phases=3)["charge_a"] == 10.0
    # the smallest phase wins; setpoint and dischargeLimit follow the same rule
    sp = ({"start_period": 0, "operation_mode": "CentralSetpoint", "setpoint": -2300.0, "setpoint_l2": -1840.0,
           "setpoint_l3": -2300.0, "discharge_limit": -6900.0}, "W")
    assert P.plan(sp, None, "2.1", volts=230, phases=3) == {"charge_a": 0.0, "discharge_a": 8.0,
                                                            "direction": "discharge"}
    dis = ({"start_period": 0, "operation_mode": "CentralSetpoint", "setpoint": -6900.0,
            "discharge_limit": -1380.0, "discharge_limit_l2": -1380.0, "discharge_limit_l3": -1380.0}, "W")
    assert P.plan(dis, None, "2.1", volts=230, phases=3)["discharge_a"] == 6.0
    # a station max profile with per-phase watts caps per phase too
    cap = ({"start_period": 0, "limit": 1610.0, "limit_l2": 1610.0, "limit_l3": 1610.0}, "W")
    assert P.plan(_period(limit=16.0), cap, "2.1", volts=230, phases=3)["charge_a"] == 7.0


def test_composite_schedule_converts_per_phase_watts_per_phase(tmp_path):

    class Ctl:
        volts, phases, max_charge_a = 230.0, 3, 32.0
    st = _station(tmp_path, ctl=Ctl())
    st.ctx.version = "2.1"
    period = {"start_period": 0, "limit": 2300.0, "limit_l2": 2300.0, "limit_l3": 2300.0}
    out = st.smart_charging.composite_period((period, "W"), None, "A")
    assert (out["limit"], out["limitL2"], out["limitL3"]) == (10.0, 10.0, 10.0)
    out = st.smart_charging.composite_period(({"start_period": 0, "limit": 6900.0}, "W"), None, "A")
    assert out["limit"] == 10.0
    out = st.smart_charging.composite_period(({"start_period": 0, "limit": 10.0, "limit_l2": 10.0}, "A"), None, "W")
    assert (out["limit"], out["limitL2"]) == (2300.0, 2300.0)


def test_profile_periods_follow_the_clock_and_the_highest_stack_level():
    store = P.ProfileStore()
    t0 = datetime(2026, 1, 1, 12, tzinfo=timezone.utc)
    base = {"charging_profile_purpose": "TxDefaultProfile", "charging_profile_kind": "Absolute"}
    store.set({**base, "id": 1, "stack_level": 0, "charging_schedule": [{
        "start_schedule": P.iso(t0), "charging_rate_unit": "A", "duration": 3600,
        "charging_schedule_period": [{"start_period": 0, "limit": 16.0}, {"start_period": 600, "limit": -8.0}]}]}, t0)
    store.set({**base, "id": 2, "stack_level": 1, "charging_schedule": [{
        "start_schedule": P.iso(t0 + timedelta(seconds=1200)), "charging_rate_unit": "A", "duration": 300,
        "charging_schedule_period": [{"start_period": 0, "limit": 6.0}]}]}, t0)
    lim = [store.composite(t0 + timedelta(seconds=s), None, None)[0][0]["limit"] for s in (0, 700, 1300, 1600)]
    assert lim == [16.0, -8.0, 6.0, -8.0]
    assert store.composite(t0 + timedelta(seconds=3700), None, None) == (None, None)
    pts = store.change_points(t0, t0 + timedelta(hours=2), None)
    assert [int((p - t0).total_seconds()) for p in pts] == [600, 1200, 1500, 3600]


# ---------------------------------------------------------------- ocpp 2.1.0 per-phase keys

def _period_dc():
    return dt21.ChargingSchedulePeriodType(start_period=0, operation_mode="CentralSetpoint", setpoint=-10.0,
                                           discharge_limit=-12.0, discharge_limit_l2=-11.0, discharge_limit_l3=-10.5)


def _request():
    return call21.SetChargingProfile(evse_id=1, charging_profile=dt21.ChargingProfileType(
        id=1, stack_level=0, charging_profile_purpose="TxDefaultProfile", charging_profile_kind="Relative",
        charging_schedule=[dt21.ChargingScheduleType(id=1, charging_rate_unit="A",
                                                     charging_schedule_period=[_period_dc()])]))


def test_ocpp_package_misspells_per_phase_keys_and_the_workaround_fixes_them():
    stock = snake_to_camel_case(remove_nones(serialize_as_dict(_request())))
    stock_period = stock["chargingProfile"]["chargingSchedule"][0]["chargingSchedulePeriod"][0]
    ours = to_payload(_request())
    period = ours["chargingProfile"]["chargingSchedule"][0]["chargingSchedulePeriod"][0]
    assert period["dischargeLimit_L2"] == -11.0 and period["dischargeLimit_L3"] == -10.5
    assert "dischargeLimitL2" not in period
    # the schema refuses the package's spelling and takes ours
    if "dischargeLimitL2" in stock_period:      # ocpp 2.1.0: the bug is there
        with pytest.raises(OCPPError):
            asyncio.run(validate_payload(Call("1", "SetChargingProfile", stock), "2.1"))
    asyncio.run(validate_payload(Call("2", "SetChargingProfile", ours), "2.1"))
    assert fix_phase_keys({"limitL3": 1, "setpointReactiveL2": 2, "limit": 3}) == \
        {"limit_L3": 1, "setpointReactive_L2": 2, "limit": 3}


# ---------------------------------------------------------------- config directory

def test_config_dir_writable_by_others_or_a_writable_key_refuses_to_start(tmp_path):
    d = tmp_path / "etc"
    d.mkdir()
    os.chmod(d, 0o750)
    (d / "client_key.pem").write_text("k")
    os.chmod(d / "client_key.pem", 0o600)
    assert check_config_dir(d) == d
    os.chmod(d / "client_key.pem", 0o666)
    with pytest.raises(ConfigDirError, match="client_key.pem is writable by others"):
        check_config_dir(d)
    os.chmod(d / "client_key.pem", 0o600)
    os.chmod(d, 0o777)
    with pytest.raises(ConfigDirError, match="writable by others"):
        check_config_dir(d)
    with pytest.raises(ConfigDirError, match="does not exist"):
        check_config_dir(tmp_path / "nope")
    # the command says so and exits non-zero, before touching any port
    proc = subprocess.run([sys.executable, "-m", "host_tools.commands.bridge", "--link", "/dev/pts/999",
                           "--csms", "ws://127.0.0.1:9/ocpp", "--station-id", "X", "--config-dir", str(d),
                           "--log-dir", str(tmp_path / "log"), "--state-dir", str(tmp_path / "st")],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode != 0 and "writable by others" in proc.stderr


# ---------------------------------------------------------------- robustness of the gateway

class _Log:
    def __init__(self):
        self.lines = []

    def event(self, station, code, msg):
        self.lines.append((code, msg))

    def text(self):
        return "\n".join(f"{c} {m}" for c, m in self.lines)

    def close(self):
        pass


class _FakeCp:
    """A CSMS connection whose answers are scripted per call: an exception or a dict."""

    def __init__(self, script):
        self.script = list(script)
        self.sent = []

    async def call_raw(self, action, payload):
        self.sent.append((action, payload))
        r = self.script.pop(0) if self.script else {}
        if isinstance(r, BaseException):
            raise r
        return r


def _station(tmp_path, sid="CS1", ctl=None, **kw):
    from host_tools.bridge.ocpp import OcppStation
    st = OcppStation(sid, "ws://127.0.0.1:9/ocpp", ctl, tmp_path / "ocpp", _Log(), **kw)
    st.transactions.queue_retry = Backoff(0.01, 0, 1)
    return st


def _drain(st, script, n_msgs, until):
    async def go():
        for i in range(n_msgs):
            st.transactions.queue.put({"seqNo": i})
        st.ctx.cp = _FakeCp(script)
        st.connected.set()
        st.loops.supervise()
        st.transactions.kick()
        for _ in range(300):
            await asyncio.sleep(0.01)
            if until(st):
                break
        alive = not st.loops.tasks["queue sender"].done()
        await st.loops.stop()
        return alive
    return asyncio.run(go())


def test_queue_sender_survives_a_schema_error_and_sets_the_message_aside(tmp_path):
    from ocpp.exceptions import FormatViolationError

    from host_tools.bridge.ocpp.connection import CallRefused
    st = _station(tmp_path)
    script = [FormatViolationError(details={"cause": "bad answer"}), {},
              CallRefused("PropertyConstraintViolation", "no such key"), {}]
    alive = _drain(st, script, 3, lambda s: len(s.transactions.queue) == 0)
    assert alive, "the queue sender died"
    assert len(st.transactions.queue) == 0
    dead = sorted((tmp_path / "ocpp" / "tx_queue" / "dead").iterdir())
    kept = [json.loads(p.read_text()) for p in dead]
    assert [k["payload"]["seqNo"] for k in kept] == [0, 2]          # set aside, never deleted
    assert "FormatViolation" in kept[0]["reason"] and "PropertyConstraint" in kept[1]["reason"]
    assert [p["seqNo"] for _, p in st.ctx.cp.sent] == [0, 1, 2]
    assert "moved to dead/" in st.ctx.clog.text()


def _attempts(st, attempts, interval=0):
    dm = st.ctx.device_model
    for name, value in (("MessageAttempts", attempts), ("MessageAttemptInterval", interval)):
        _, v = dm.find("OCPPCommCtrlr", name, "TransactionEvent")
        assert dm.set_text(v, str(value)) == ("Accepted", None)


def test_queue_sender_keeps_a_message_on_transient_refusals(tmp_path):
    from host_tools.bridge.ocpp.connection import CallRefused
    st = _station(tmp_path)
    _attempts(st, 6)
    script = [CallRefused("InternalError", "db down")] * 4 + [CallRefused("GenericError", "busy"),
                                                              RuntimeError("bug"), {}]
    alive = _drain(st, script, 1, lambda s: len(s.transactions.queue) == 0)
    assert alive and len(st.transactions.queue) == 0
    assert len(st.ctx.cp.sent) == 7 and all(p["seqNo"] == 0 for _, p in st.ctx.cp.sent)   # same message, kept
    assert not (tmp_path / "ocpp" / "tx_queue" / "dead").exists()
    assert st.ctx.counters["tx_events_sent"] == 1
    assert "attempt 5 of 6" in st.ctx.clog.text() and "RuntimeError" in st.ctx.clog.text()


def test_queue_sender_gives_up_a_refused_message_after_message_attempts(tmp_path):
    """E13: a TransactionEvent answered with a CALLERROR is tried MessageAttempts times in all,
    then set aside (kept for billing) so the ones behind it go out; not retried forever."""
    from host_tools.bridge.ocpp.connection import CallRefused
    st = _station(tmp_path)
    _attempts(st, 3)
    script = [CallRefused("InternalError", "db down")] * 3 + [{}]
    alive = _drain(st, script, 2, lambda s: len(s.transactions.queue) == 0)
    assert alive and len(st.transactions.queue) == 0
    assert [p["seqNo"] for _, p in st.ctx.cp.sent] == [0, 0, 0, 1]
    dead = sorted((tmp_path / "ocpp" / "tx_queue" / "dead").iterdir())
    kept = [json.loads(p.read_text()) for p in dead]
    assert [k["payload"]["seqNo"] for k in kept] == [0] and "3 attempts (MessageAttempts 3)" in kept[0]["reason"]


def test_heartbeats_outlive_a_schema_error_and_a_dead_loop_is_restarted(tmp_path):
    from ocpp.exceptions import FormatViolationError
    st = _station(tmp_path)
    st.provisioning.heartbeat_s = 0.01
    st.ctx.cp = _FakeCp([FormatViolationError(details={}), ValueError("x"), {}, {}])

    async def go():
        hb = asyncio.ensure_future(st.provisioning.heartbeats())
        await asyncio.sleep(0.2)
        assert not hb.done()
        hb.cancel()
        # a loop that ends anyway is restarted by the supervisor
        loops = st.loops
        loops.supervise()
        loops.tasks["profile ticker"].cancel()
        loops.tasks["profile ticker"] = asyncio.ensure_future(asyncio.sleep(0))
        loops.tasks["profile ticker"].add_done_callback(loops.loop_ended)
        await asyncio.sleep(0.01)
        loops.supervise()
        restarted = not loops.tasks["profile ticker"].done()
        await loops.stop()
        return restarted
    import host_tools.bridge.offline as os_mod
    os_mod.LOOP_RESTART_S, old = 0.0, os_mod.LOOP_RESTART_S
    try:
        assert asyncio.run(go())
    finally:
        os_mod.LOOP_RESTART_S = old
    assert len(st.ctx.cp.sent) >= 3
    assert "Heartbeat answer refused" in st.ctx.clog.text() and "profile ticker stopped" in st.ctx.clog.text()


class _Ctl:
    """The controller facade OcppStation uses, answering every command with ok."""

    def __init__(self, sample=None):
        self.sample = sample or {"cp": "A", "mode": "idle"}
        self.sent = []
        self.fw, self.serial = "0.1.0", "sim-CS1"

    async def command(self, op, args):
        from host_tools.link import CommandResult
        self.sent.append(op)
        return CommandResult("t", True, None, "ok", {})


def test_remote_start_carries_the_id_token_into_transaction_event_started(tmp_path):
    st = _station(tmp_path, ctl=_Ctl())
    tok = {"id_token": "TAG-0042", "type": "ISO14443"}

    async def go():
        r = await st.transactions.on_request_start_transaction(id_token=tok, remote_start_id=42)
        assert r == {"status": "Accepted"}
        st.on_sample({"cp": "B", "mode": "idle"}, 0.0)       # the cable goes in
        st.on_sample({"cp": "B", "mode": "idle"}, 0.5)
        await asyncio.sleep(0)
        # a second start on the running transaction names its token on the Updated event
        r = await st.transactions.on_request_start_transaction(id_token={"id_token": "TAG-7", "type": "Central"},
                                                remote_start_id=43)
        assert r["transactionId"] == st.transactions.tx["id"]
    asyncio.run(go())
    started, upd = st.transactions.queue.items()
    assert started["eventType"] == "Started" and started["triggerReason"] == "RemoteStart"
    assert started["idToken"] == {"idToken": "TAG-0042", "type": "ISO14443"}
    assert started["transactionInfo"]["remoteStartId"] == 42
    assert upd["idToken"] == {"idToken": "TAG-7", "type": "Central"} and upd["seqNo"] == 1
    assert st.transactions.remote_id_token is None            # used once: the next cable-in is a plain one


def test_availability_is_kept_across_a_restart_of_the_bridge(tmp_path):
    st = _station(tmp_path, ctl=_Ctl())
    assert asyncio.run(st.availability.on_change_availability("Inoperative")) == {"status": "Accepted"}
    assert st.ctx.ctl.sent == ["stop"] and st.availability.current_status() == "Unavailable"
    again = _station(tmp_path, ctl=_Ctl())        # the bridge restarts
    assert again.available is False and again.availability.current_status() == "Unavailable"

    async def cable_in():
        await again.controller_up()               # the controller is told again: no session
        again.on_sample({"cp": "B", "mode": "idle"}, 0.0)
        await asyncio.sleep(0)
    asyncio.run(cable_in())
    assert again.ctx.ctl.sent == ["stop"] and not again.transactions.tx.get("id") and len(again.transactions.queue) == 0
    assert asyncio.run(again.availability.on_change_availability("Operative")) == {"status": "Accepted"}
    third = _station(tmp_path, ctl=_Ctl())
    assert third.available is True
    asyncio.run(third.controller_up())
    assert third.ctx.ctl.sent == []                   # an operative station leaves the controller alone


def test_after_a_remote_stop_the_next_vehicle_charges_again(tmp_path):
    st = _station(tmp_path, ctl=_Ctl())

    async def go():
        st.on_sample({"cp": "C", "mode": "charging"}, 0.0)
        assert (await st.transactions.on_request_stop_transaction(st.transactions.tx["id"]))["status"] == "Accepted"
        st.on_sample({"cp": "C", "mode": "idle"}, 1.0)     # same vehicle: no new transaction
        assert not st.transactions.tx.get("id")
        st.on_sample({"cp": "A", "mode": "idle"}, 2.0)     # it leaves: the session is enabled again
        await asyncio.sleep(0.01)
        st.on_sample({"cp": "B", "mode": "idle"}, 3.0)
    asyncio.run(go())
    assert st.ctx.ctl.sent == ["stop", "start"]
    assert [m["eventType"] for m in st.transactions.queue.items()] == ["Started", "Ended", "Started"]


def test_a_ws_csms_without_a_password_is_a_warning_at_start(tmp_path):
    from host_tools.bridge.service import Gateway
    cfg = tmp_path / "etc"
    cfg.mkdir(mode=0o750)
    kw = dict(csms_url="ws://127.0.0.1:9/ocpp", config_dir=cfg, state_dir=tmp_path / "st")
    with pytest.raises(ValueError, match="reserved"):                 # the gateways' own topic level
        Gateway([("_gateway", "/dev/null"), ("CS2", "/dev/null")], log_dir=tmp_path / "logx", **kw)
    Gateway([("CS1", "/dev/null")], log_dir=tmp_path / "log0", **kw).close()
    line = (tmp_path / "log0" / "central_system.log").read_text()
    assert " WARNING - CSMS ws://127.0.0.1:9/ocpp without security (profile 0)" in line
    assert "csms_password" in line
    (cfg / "csms_password").write_text("0123456789abcdef")
    (cfg / "csms_password").chmod(0o600)
    gw = Gateway([("CS1", "/dev/null")], log_dir=tmp_path / "log1", **kw)
    try:
        assert gw.bridges[0].ocpp.security.profile == 1
    finally:
        gw.close()
    assert "WARNING" not in (tmp_path / "log1" / "central_system.log").read_text()


def test_station_ids_are_checked_and_quoted_in_the_url(tmp_path):
    from host_tools.bridge.ocpp import check_station_id
    for bad in ("", ".", "..", "a/b", "a b", "x" * 49, "é", "a?b"):
        with pytest.raises(ValueError, match="not a valid OCPP identity"):
            check_station_id(bad)
    st = _station(tmp_path, "site:CS-1.a_b")
    assert st.url == "ws://127.0.0.1:9/ocpp/site%3ACS-1.a_b"
    with pytest.raises(ValueError, match="OCPP identity"):
        _station(tmp_path, "../evil")


def test_update_firmware_one_at_a_time_and_only_allowed_locations(tmp_path):
    from host_tools.bridge.ocpp import Security

    class Ctl:
        fota = object()
    st = _station(tmp_path, ctl=Ctl())
    fw = {"location": "file:///srv/fw.v2gb", "retrieve_date_time": "2026-01-01T00:00:00Z"}
    r = st.firmware.on_update_firmware(1, fw)
    assert r["status"] == "Rejected" and "allow-file-updates" in r["statusInfo"]["additionalInfo"]
    assert st.firmware.on_update_firmware(1, {**fw, "location": "ftp://x/fw"})["status"] == "Rejected"
    assert st.firmware.on_update_firmware(2, {**fw, "location": "https://x/fw"})["status"] == "Accepted"
    second = st.firmware.on_update_firmware(3, {**fw, "location": "https://x/fw2"})
    assert second["status"] == "Rejected" and second["statusInfo"]["reasonCode"] == "InProgress"
    st2 = _station(tmp_path / "b", allow_file_updates=True, ctl=Ctl())
    assert st2.firmware.on_update_firmware(1, fw)["status"] == "Accepted"
    # the update ends (whatever the outcome): the next one is accepted again
    done = []

    async def fota(firmware, report):
        done.append(firmware["location"])
        raise RuntimeError("link lost")
    st.ctx.ctl.fota = fota
    with pytest.raises(RuntimeError):
        asyncio.run(st.firmware.after_update_firmware({"status": "Accepted"}, 2, {"location": "https://x/fw"}))
    assert st.firmware.on_update_firmware(4, {**fw, "location": "https://x/fw"})["status"] == "Accepted"
    # GetLog: plain http only up to security profile 1
    log_req = {"remote_location": "http://logs.example/up"}
    assert st.diagnostics.on_get_log(log_req, "DiagnosticsLog", 5)["status"] == "Accepted"
    st.ctx.security = Security(2, password="pw")
    r = st.diagnostics.on_get_log(log_req, "DiagnosticsLog", 6)
    assert r["status"] == "Rejected" and "https" in r["statusInfo"]["additionalInfo"]
    assert st.diagnostics.on_get_log({"remote_location": "https://logs.example/up"}, "DiagnosticsLog", 7)["status"] == "Accepted"


def test_firmware_push_follows_the_link_of_the_moment(tmp_path):
    from host_tools import link as hl
    from host_tools.bridge.service import StationBridge, _CurrentLink
    b = StationBridge("CS1", "/dev/null", "ws://127.0.0.1:9/ocpp", clog=_Log(), state_dir=tmp_path)
    try:
        cur = _CurrentLink(b)
        with pytest.raises(hl.LinkError, match="offline"):
            _ = cur.command

        class L:
            def __init__(self, name):
                self.name = name
        b.link = L("first")
        assert cur.name == "first"
        b.link = L("after the reboot")
        assert cur.name == "after the reboot"
    finally:
        b.close()


def test_one_state_dir_per_bridge_and_unique_station_ids(tmp_path):
    from host_tools.bridge.service import Gateway, StateDirLocked, StationBridge
    cfg = tmp_path / "etc"
    cfg.mkdir(mode=0o750)
    kw = dict(csms_url="ws://127.0.0.1:9/ocpp", config_dir=cfg, log_dir=tmp_path / "log",
              state_dir=tmp_path / "st")
    with pytest.raises(ValueError, match="given twice"):
        Gateway([("CS1", "/dev/null"), ("CS1", "/dev/null")], **kw)
    with pytest.raises(ValueError, match="OCPP identity"):
        Gateway([("..", "/dev/null")], **kw)
    gw = Gateway([("CS1", "/dev/null")], **kw)
    try:
        with pytest.raises(StateDirLocked, match=f"pid {os.getpid()}"):
            StationBridge("CS1", "/dev/null", kw["csms_url"], clog=_Log(), state_dir=tmp_path / "st")
        # another process is refused too (flock is per open file, so a child sees the lock)
        proc = subprocess.run([sys.executable, "-m", "host_tools.commands.bridge", "--link", "/dev/pts/999",
                               "--csms", kw["csms_url"], "--station-id", "CS1", "--config-dir", str(cfg),
                               "--log-dir", str(tmp_path / "log"), "--state-dir", str(tmp_path / "st")],
                              capture_output=True, text=True, timeout=20, cwd=ROOT)
        assert proc.returncode != 0 and "in use by another bridge" in proc.stderr, proc.stderr
    finally:
        gw.close()
    Gateway([("CS1", "/dev/null")], **kw).close()      # released: usable again


def test_an_in_process_gateway_stops_cleanly(tmp_path):
    from host_tools.bridge.service import Gateway
    cfg = tmp_path / "etc"
    cfg.mkdir(mode=0o750)
    gw = Gateway([("CS1", "socket://127.0.0.1:9"), ("CS2", "socket://127.0.0.1:9")],
                 csms_url="ws://127.0.0.1:9/ocpp", config_dir=cfg, log_dir=tmp_path / "log",
                 state_dir=tmp_path / "st", backoff=lambda: Backoff(0.05, 0, 0))

    async def go():
        t = asyncio.ensure_future(gw.run())
        await asyncio.sleep(0.3)
        t.cancel()
        await asyncio.gather(t, return_exceptions=True)
        return [x for x in asyncio.all_tasks() if x is not asyncio.current_task()]
    try:
        assert asyncio.run(go()) == []
    finally:
        gw.close()


def test_config_dir_checks_every_file_secrets_readable_and_dangling_links(tmp_path):
    d = tmp_path / "etc"
    d.mkdir()
    os.chmod(d, 0o750)
    (d / "mqtt_ca.pem").write_text("ca")
    os.chmod(d / "mqtt_ca.pem", 0o644)
    (d / "mqtt_password").write_text("pw")
    os.chmod(d / "mqtt_password", 0o640)
    assert check_config_dir(d) == d
    os.chmod(d / "mqtt_ca.pem", 0o664)
    with pytest.raises(ConfigDirError, match="mqtt_ca.pem is writable by its group"):
        check_config_dir(d)
    os.chmod(d / "mqtt_ca.pem", 0o644)
    os.chmod(d / "mqtt_password", 0o604)
    with pytest.raises(ConfigDirError, match="mqtt_password is readable by others"):
        check_config_dir(d)
    os.chmod(d / "mqtt_password", 0o600)
    (d / "station.pem").write_text("-----BEGIN EC PRIVATE KEY-----\n")
    os.chmod(d / "station.pem", 0o644)
    with pytest.raises(ConfigDirError, match="station.pem is readable by others"):
        check_config_dir(d)
    (d / "station.pem").unlink()
    (d / "csms_ca.pem").symlink_to(tmp_path / "gone.pem")
    with pytest.raises(ConfigDirError, match="csms_ca.pem is a symlink to .*gone.pem.*dangling"):
        check_config_dir(d)
    (d / "csms_ca.pem").unlink()
    os.chmod(d, 0o770)
    with pytest.raises(ConfigDirError, match="writable by its group"):
        check_config_dir(d)


def test_a_damaged_public_key_stops_start_up_and_odd_input_gets_v2g_400(tmp_path):
    from host_tools.bridge.service import StationBridge
    (tmp_path / "app_jwt_public.pem").write_text("-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n")
    with pytest.raises(ConfigDirError, match="app_jwt_public.pem is not a PEM public key"):
        TokenVerifier.from_config_dir(tmp_path, "CS1")
    rsa_like = TokenVerifier("not a key", "ES256", "CS1")       # a key the library cannot use
    tok = jwt.encode({"exp": time.time() + 60, "aud": "CS1"}, ec.generate_private_key(ec.SECP256R1()),
                     algorithm="ES256")
    with pytest.raises(AuthError):
        rsa_like.verify(tok)

    b = StationBridge("CS1", "/dev/null", "ws://127.0.0.1:9/ocpp", clog=_Log(), state_dir=tmp_path / "st",
                      verifier=TokenVerifier("s" * 32, "HS256", "CS1"))
    published = []

    class Mqtt:
        def publish(self, station, leaf, obj, **kw):
            published.append((leaf, obj))
    b.mqtt = Mqtt()
    try:
        deep = b"[" * 100_000 + b"]" * 100_000
        res = asyncio.run(b.app_command(deep))
        assert res["code"] == "V2G-400" and not res["ok"]

        async def boom(raw):
            raise KeyError("bug")
        b.app_command = boom
        asyncio.run(b.on_app_message(b"{}"))
        assert published[-1][0] == "cmd/result" and published[-1][1]["code"] == "V2G-400"
        assert "KeyError" in b.clog.text()
    finally:
        b.close()


def test_an_app_command_too_large_for_a_frame_is_v2g_400_and_results_carry_only_their_fields(tmp_path):
    from host_tools.bridge.alink import AsyncLink
    from host_tools.bridge.service import StationBridge
    b = StationBridge("CS1", "/dev/null", "ws://127.0.0.1:9/ocpp", clog=_Log(), state_dir=tmp_path / "st",
                      verifier=TokenVerifier("s" * 32, "HS256", "CS1"))
    tok = jwt.encode({"exp": int(time.time()) + 60, "aud": "CS1"}, "s" * 32, algorithm="HS256")

    def cmd(txn, op, args):
        return json.dumps({"txn": txn, "token": tok, "op": op, "args": args})

    async def go():
        # the real link, its port not open: what reaches the write says "not open"
        link = AsyncLink("socket://127.0.0.1:9", name="CS1")
        link._loop = asyncio.get_running_loop()
        b.link, b.online = link, True
        big = await b.app_command(cmd("big-1", "soc_target", {"soc_pct": 80, "mode": "charge", "note": "x" * 2000}))
        down = await b.app_command(cmd("small-1", "charge_only", {"on": True}))
        return big, down
    try:
        big, down = asyncio.run(go())
    finally:
        b.close()
    fields = {"txn", "ok", "code", "msg", "data"}
    assert big["code"] == "V2G-400" and not big["ok"] and "frame" in big["msg"] and set(big) == fields
    assert down["code"] == "V2G-110" and set(down) == fields            # no internal flag sent to the app
    assert "big-1" in b.results and "small-1" not in b.results       # an outage is not kept as the answer


def test_mqtt_password_needs_a_user_and_a_refused_login_is_an_error_line(tmp_path):
    from host_tools.bridge.mqtt_app import MqttApp
    from host_tools.bridge.service import Gateway
    cfg = tmp_path / "etc"
    cfg.mkdir(mode=0o750)
    (cfg / "mqtt_password").write_text("pw")
    os.chmod(cfg / "mqtt_password", 0o600)
    with pytest.raises(ValueError, match="names no user"):
        Gateway([("CS1", "/dev/null")], csms_url="ws://127.0.0.1:9/ocpp", config_dir=cfg,
                log_dir=tmp_path / "log", state_dir=tmp_path / "st", mqtt_url="mqtt://127.0.0.1:1")
    clog = _Log()
    m = MqttApp("mqtt://u@127.0.0.1:1", password="pw", clog=clog)

    class Rc:
        is_failure = True

        def __str__(self):
            return "Not authorized"
    m._on_connect(m.client, None, None, Rc(), None)
    assert clog.lines and clog.lines[0][0] == "V2G-401" and "refused the login" in clog.lines[0][1]


def test_cli_refuses_an_empty_site_and_unbounded_backoff(tmp_path):
    from click.testing import CliRunner

    from host_tools.commands.bridge import cli
    cfg = tmp_path / "etc"
    cfg.mkdir(mode=0o750)
    site = tmp_path / "site.json"
    site.write_text("[]")
    base = ["--csms", "ws://127.0.0.1:9/ocpp", "--config-dir", str(cfg), "--log-dir", str(tmp_path / "log"),
            "--state-dir", str(tmp_path / "st")]
    r = CliRunner().invoke(cli, base + ["--site", str(site)])
    assert r.exit_code != 0 and "lists no controllers" in r.output
    site.write_text('[{"station_id": "A", "link": "x"}, {"station_id": "A", "link": "y"}]')
    r = CliRunner().invoke(cli, base + ["--site", str(site)])
    assert r.exit_code != 0 and "given twice" in r.output
    r = CliRunner().invoke(cli, base + ["--link", "x", "--station-id", "a/b"])
    assert r.exit_code != 0 and "OCPP identity" in r.output
    for bad in ("nan,1,1", "inf,1,1", "1,inf,1", "0,1,1", "-1,1,1", "1,1,1.5", "1,1,30", "4000,1,0",
                "1,1e9,1", "1,1"):
        r = CliRunner().invoke(cli, base + ["--link", "x", "--station-id", "A", "--retry-backoff", bad])
        assert r.exit_code == 2 and "--retry-backoff" in r.output, (bad, r.output)


def test_cli_refuses_nan_timings_a_malformed_site_and_a_link_that_is_no_port(tmp_path):
    from click.testing import CliRunner

    from host_tools.commands.bridge import cli
    cfg = tmp_path / "etc"
    cfg.mkdir(mode=0o750)
    base = ["--csms", "ws://127.0.0.1:9/ocpp", "--config-dir", str(cfg), "--log-dir", str(tmp_path / "log"),
            "--state-dir", str(tmp_path / "st")]
    one = ["--link", "/dev/pts/999", "--station-id", "A"]
    for opt in ("--meter-interval", "--handshake-timeout"):
        r = CliRunner().invoke(cli, base + one + [opt, "nan"])
        assert r.exit_code == 2 and opt in r.output and "not a number" in r.output, r.output
    site = tmp_path / "site.json"
    site.write_text("[1, 2, 3]")
    r = CliRunner().invoke(cli, base + ["--site", str(site)])
    assert r.exit_code == 1 and "entry 0 is not" in r.output, r.output
    site.write_text('[{"station_id": "A", "link": "/dev/pts/999"}]')
    r = CliRunner().invoke(cli, base + ["--site", str(site)] + one)
    assert r.exit_code == 2 and "without --link" in r.output
    afile = tmp_path / "not-a-port"
    afile.write_text("")
    r = CliRunner().invoke(cli, base + ["--link", str(afile), "--station-id", "A"])
    assert r.exit_code != 0 and "regular file, not a serial port" in r.output


def test_the_app_departure_goes_to_the_controller_as_seconds_from_now_and_a_bad_one_sends_nothing(tmp_path):
    from host_tools.bridge.service import StationBridge
    from host_tools.link import CommandResult
    b = StationBridge("CS1", "/dev/null", "ws://127.0.0.1:9/ocpp", clog=_Log(), state_dir=tmp_path / "st",
                      verifier=TokenVerifier("s" * 32, "HS256", "CS1"))
    tok = jwt.encode({"exp": int(time.time()) + 60, "aud": "CS1", "sub": "driver"}, "s" * 32, algorithm="HS256")
    sent = []

    async def command(op, args, txn=None):
        if op == "status":          # the refresh after each app command: left as the test set it
            return CommandResult(txn, False, "V2G-110", "not now", {})
        sent.append((op, dict(args)))
        return CommandResult(txn, True, None, "ok", {"target_pm": 800, "departure_s": args.get("departure_s")})
    b.command = command
    b.online = True

    def app(txn, args):
        return asyncio.run(b.app_command(json.dumps({"txn": txn, "token": tok, "op": "soc_target", "args": args})))

    now = datetime.now(timezone.utc)
    in_2h = (now + timedelta(hours=2)).astimezone(timezone(timedelta(hours=1))).isoformat()
    try:
        assert app("d-1", {"soc_pct": 80, "departure": in_2h})["ok"]
        op, args = sent[-1]
        assert op == "soc_target" and set(args) == {"soc_pct", "departure_s"}
        assert 7200 - 5 <= args["departure_s"] <= 7200 and isinstance(args["departure_s"], int)
        assert b.app_target == {"soc_pct": 80, "departure": in_2h}          # the driver's time is kept
        assert b.status_doc()["departure"] is None                          # the controller's word decides
        b.status = {"departure_s": 7190}
        assert b.status_doc()["departure"] == datetime.fromisoformat(in_2h).astimezone(timezone.utc).isoformat()
        n = len(sent)
        for txn, dep, why in (("d-2", (now - timedelta(minutes=1)).isoformat(), "has passed"),
                              ("d-3", (now + timedelta(days=7)).isoformat(), "more than 6 days ahead"),
                              ("d-4", "2026-12-05T17:30:00", "no time zone"),
                              ("d-5", "half past five", "not an ISO 8601 time"),
                              ("d-6", 1733420000, "not a time")):
            res = app(txn, {"soc_pct": 50, "departure": dep})
            assert not res["ok"] and res["code"] == "V2G-400" and res["msg"].startswith("departure") \
                and why in res["msg"], res
            assert app(txn, {"soc_pct": 50, "departure": dep}) == res        # same txn, same answer
        assert len(sent) == n and b.app_target["departure"] == in_2h        # nothing sent, nothing changed
        assert app("d-7", {"soc_pct": 70})["ok"] and sent[-1][1] == {"soc_pct": 70}   # none: cleared
        # a target brought back after a CSMS plan: converted then; a departure passed meanwhile is left out
        b.app_target = {"soc_pct": 60, "departure": (now + timedelta(hours=1)).isoformat()}
        assert 3600 - 5 <= b._app_target_args()["departure_s"] <= 3600
        b.app_target = {"soc_pct": 60, "departure": (now - timedelta(hours=1)).isoformat()}
        assert b._app_target_args() == {"soc_pct": 60} and "has passed" in b.clog.text()
    finally:
        b.close()
