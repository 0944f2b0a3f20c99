"""Bridge parts without a board: back-off, offline queue, tokens, variables, profiles,
the per-phase key workaround for `ocpp` 2.1.0, the config directory checks."""

import asyncio
import base64
import hashlib
import hmac
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
from host_tools.bridge.ocpp_proto import fix_phase_keys, to_payload
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
        P.check_profile({"charging_profile_purpose": "TxProfile", "charging_profile_kind": "Relative",
                         "charging_schedule": [{"charging_rate_unit": "A", "charging_schedule_period": [
                             {"start_period": 0, "operation_mode": "LocalFrequency"}]}]}, "2.1")
    assert e.value.reason == "UnsupportedOperationMode"


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
    proc = subprocess.run([sys.executable, "-m", "host_tools.commands.bridge", "--link", "/dev/null",
                           "--csms", "ws://127.0.0.1:9/ocpp", "--station-id", "X", "--config-dir", str(d),
                           "--log-dir", str(tmp_path / "log"), "--state-dir", str(tmp_path / "st")],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode != 0 and "writable by others" in proc.stderr
