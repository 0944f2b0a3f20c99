"""Scenarios through Controller.step with hand-built inputs (one step = 50 ms)."""
import micropython
from fwtest import FixedGrid, raises

from core import config
from core import errors as E
from core import limits as L
from core import pilot as P
from core.controller import CONTROL_PERIOD_MS, DIODE_SAMPLES, MODES, Controller, Inputs

A_MV = 12000
B_MV = 9000
C_MV = 6000
D_MV = 3000
E_MV = 0


class Rig:
    """Controller plus a minimal obedient plant: the contactor follows its command,
    the vehicle draws what is asked, the cooling pump runs when commanded (its tachometer
    counts) unless pump_ok is False."""

    def __init__(self, changes=None, soc_pm=800):
        self.cfg = config.validate(changes or {})
        self.c = Controller(self.cfg)
        i = Inputs()
        i.cp_high_mv = A_MV
        i.cp_low_mv = -12000
        i.pp_limit_a = 32
        i.meter_ok = True
        i.meter_age_ms = 100
        i.meter_mv = 240000
        i.meter_mhz = 60000
        i.evse_temp_dc = 300
        i.bms_age_ms = 50
        i.bms_soc_pm = soc_pm
        i.bms_temp_dc = 250
        i.bms_max_charge_ma = 32000
        i.bms_max_discharge_ma = 32000
        i.bms_capacity_wh = 60000
        self.i = i
        self.t = 0
        self.hb = True
        self.feedback_follows = True
        self.welded = False
        self.pump_ok = True
        self.o = None
        self.n = 0

    def step(self, n=1):
        c = self.c
        i = self.i
        for _ in range(n):
            self.t += CONTROL_PERIOD_MS
            if self.hb:
                c.heartbeat(self.t)
            o = c.step(self.t, i)
            # the numbers the HAL and CAN take are the names telemetry shows, every step
            assert MODES[o.mode_i] == o.mode and P.LETTERS[o.cp_i] == o.cp_state
            assert L.SOURCES[o.charge_src_i] == o.limit_charge_src
            assert L.SOURCES[o.discharge_src_i] == o.limit_discharge_src
            if self.welded:
                i.contactor_closed = True
            elif self.feedback_follows:
                i.contactor_closed = o.contactor
            i.meter_ma = o.request_ma if i.contactor_closed else 0
            if o.cooling and self.pump_ok:
                i.cooling_count += 3
            self.o = o
        return self.o

    def until(self, pred, limit=400):
        """Steps until pred(outputs) holds; returns how many."""
        for k in range(1, limit + 1):
            if pred(self.step()):
                return k
        raise AssertionError('condition not reached in {} steps'.format(limit))

    def cmd(self, txn, op, args=None):
        return self.c.command(self.t, txn, op, args)

    def charging(self):
        self.i.cp_high_mv = B_MV
        self.step(2)
        self.i.cp_high_mv = C_MV
        self.until(lambda o: o.request_ma == self.o.limit_charge_ma and o.request_ma > 0)
        return self.o

    def codes(self):
        return E.active(self.o.errors)

    def events(self):
        return self.c.pop_events()


def test_plug_and_charge_timing():
    r = Rig()
    o = r.step(2)
    assert o.cp_state == 'A' and o.mode == 'idle' and o.pwm_pm == 1000 and not o.contactor
    r.i.cp_high_mv = B_MV
    o = r.step()
    assert o.cp_state == 'B' and o.mode == 'connected' and not o.contactor
    assert o.pwm_pm == 533        # 32 A offer
    r.i.cp_high_mv = C_MV
    n = r.until(lambda o: o.contactor)
    assert n == 3                  # 150 ms debounce, far inside the 3 s of IEC 61851
    assert r.o.mode == 'charging' and r.o.cp_state == 'C'
    # the request ramps up: no step above 10 A/s * 50 ms
    last = 0
    steps = 0
    while r.o.request_ma < 32000:
        o = r.step()
        assert 0 <= o.request_ma - last <= 500, (last, o.request_ma)
        last = o.request_ma
        steps += 1
    assert 60 <= steps <= 70
    assert r.o.limit_charge_ma == 32000 and r.o.limit_charge_src == 'station'
    assert r.codes() == []


def test_pause_opens_contactor_in_one_step():
    r = Rig()
    r.charging()
    r.i.cp_high_mv = B_MV
    o = r.step()
    assert not o.contactor and o.request_ma == 0 and o.mode == 'connected'   # 50 ms < 100 ms
    r.i.cp_high_mv = C_MV
    assert r.until(lambda o: o.contactor) == 3


def test_unplug_opens_at_once():
    r = Rig()
    r.charging()
    r.i.cp_high_mv = A_MV
    o = r.step()
    assert not o.contactor and o.mode == 'idle' and o.pwm_pm == 1000 and o.request_ma == 0


def test_cable_and_bms_limits():
    r = Rig()
    r.i.pp_limit_a = 20
    o = r.charging()
    assert o.limit_charge_ma == 20000 and o.limit_charge_src == 'cable' and o.pwm_pm == 333
    r.i.bms_max_charge_ma = 12000
    o = r.step()
    assert o.request_ma == 12000 and o.limit_charge_src == 'bms' and o.pwm_pm == 200
    r.i.pp_limit_a = 0            # unknown cable: 13 A minimum rating assumed
    r.i.bms_max_charge_ma = 32000
    o = r.step()
    assert o.limit_charge_ma == 13000 and o.limit_charge_src == 'cable'


def test_state_e_fault_and_recovery_through_b():
    r = Rig()
    r.charging()
    r.events()
    r.i.cp_high_mv = E_MV
    o = r.step()
    assert not o.contactor and o.pwm_pm == 0 and o.mode == 'fault' and o.request_ma == 0
    assert 'V2G-010' in r.codes()
    ev = r.events()
    assert ev[0][1] == 'V2G-010' and ev[0][2] is True and '0 mV' in ev[0][3] and 'state F' in ev[0][3]
    # going straight back to C is not a recovery
    r.i.cp_high_mv = C_MV
    o = r.step(60)
    assert 'V2G-010' in r.codes() and not o.contactor
    r.i.cp_high_mv = B_MV
    n = r.until(lambda o: not (o.errors & E.E010))
    assert n <= 40
    assert r.o.mode == 'connected'
    ev = r.events()
    assert ev[-1][1] == 'V2G-010' and ev[-1][2] is False
    r.i.cp_high_mv = C_MV
    assert r.until(lambda o: o.contactor) == 3


def test_unknown_level_is_a_fault_at_once_while_energy_flows():
    r = Rig()
    r.charging()
    r.i.cp_high_mv = 10500
    o = r.step()
    assert not o.contactor and o.pwm_pm == 0 and 'V2G-010' in r.codes()
    assert 'fits no state' in r.events()[-1][3]


def test_diode_missing_needs_state_a():
    r = Rig()
    r.charging()
    r.i.cp_low_mv = -1000
    n = r.until(lambda o: o.errors & E.E010)
    assert n <= 2 and not r.o.contactor and r.o.pwm_pm == 0
    assert 'diode' in r.events()[-1][3]
    r.i.cp_high_mv = B_MV
    r.step(80)
    assert 'V2G-010' in r.codes()         # B is not enough for a missing diode
    r.i.cp_high_mv = A_MV
    r.i.cp_low_mv = -12000
    r.until(lambda o: not (o.errors & E.E010))
    assert r.o.mode == 'idle'


def test_state_d_without_ventilation():
    r = Rig()
    r.charging()
    r.i.cp_high_mv = D_MV
    o = r.step()
    assert not o.contactor and o.mode == 'fault' and 'V2G-012' in r.codes()
    r.i.cp_high_mv = C_MV
    r.until(lambda o: o.contactor)
    assert 'V2G-012' not in r.codes()


def test_state_d_with_ventilation_charges():
    r = Rig({'VENTILATION_AVAILABLE': True})
    r.i.cp_high_mv = B_MV
    r.step(2)
    r.i.cp_high_mv = D_MV
    assert r.until(lambda o: o.contactor) == 3
    assert r.o.mode == 'charging' and r.codes() == []


def test_welded_contactor_latches_until_operator():
    r = Rig()
    r.charging()
    r.welded = True
    r.i.cp_high_mv = B_MV
    n = r.until(lambda o: o.errors & E.E011)
    assert n * CONTROL_PERIOD_MS <= 600
    assert 'welded' in r.events()[-1][3]
    r.i.cp_high_mv = C_MV
    o = r.step(20)
    assert not o.contactor and o.mode == 'fault' and o.pwm_pm == 1000
    ok, code, msg, _ = r.cmd('cf1', 'clear_fault')
    assert not ok and code == 'V2G-011' and 'still closed' in msg
    ok, code, _, _ = r.cmd('s1', 'start')
    assert not ok and code == 'V2G-011'
    r.welded = False
    r.i.contactor_closed = False
    r.step()
    ok, code, _, _ = r.cmd('cf2', 'clear_fault')
    assert ok and code is None
    assert r.until(lambda o: o.contactor) <= 3
    assert 'V2G-011' not in r.codes()


def test_contactor_fails_to_close():
    r = Rig()
    r.feedback_follows = False
    r.i.cp_high_mv = B_MV
    r.step(2)
    r.i.cp_high_mv = C_MV
    r.until(lambda o: o.contactor)
    assert r.o.request_ma == 0          # nothing asked before the feedback
    n = r.until(lambda o: o.errors & E.E011)
    assert n * CONTROL_PERIOD_MS <= 600
    assert not r.o.contactor and 'fails to close' in r.events()[-1][3]


def test_current_with_contactor_open_is_a_weld():
    r = Rig()
    r.i.cp_high_mv = B_MV
    r.step(20)
    r.feedback_follows = False
    r.i.meter_ma = 8000
    r.c.step(r.t + 50, r.i)
    r.t += 50
    assert r.c.out.errors & E.E011


def test_heartbeat_loss_stops_discharge_within_one_step():
    r = Rig({'HEARTBEAT_TIMEOUT_S': 2})
    r.charging()
    assert r.cmd('t1', 'soc_target', {'soc_pct': 40})[0]
    r.until(lambda o: o.request_ma <= -32000)
    assert r.o.mode == 'discharging'
    r.hb = False
    lost_at = r.t
    n = r.until(lambda o: o.request_ma >= 0)
    # the step after the timeout already asks nothing out of the battery
    assert r.t - lost_at <= 2000 + CONTROL_PERIOD_MS
    assert r.o.mode == 'charge_only' and 'V2G-101' in r.codes()
    assert r.o.limit_discharge_ma == 0 and r.o.limit_discharge_src == 'heartbeat'
    assert n >= 39
    ev = r.events()
    assert ev[-1][1] == 'V2G-101' and '2.0 s' in ev[-1][3]
    # charge-only: charging continues
    r.until(lambda o: o.request_ma > 0)
    # heartbeat back: still no discharge until a fresh command
    r.hb = True
    o = r.step(20)
    assert o.request_ma >= 0 and o.mode == 'charge_only' and 'V2G-101' in r.codes()
    # a repeated txn is not fresh
    assert r.cmd('t1', 'soc_target', {'soc_pct': 40})[0]
    o = r.step(5)
    assert o.request_ma >= 0 and 'V2G-101' in r.codes()
    assert r.cmd('t2', 'soc_target', {'soc_pct': 40})[0]
    assert 'V2G-101' not in E.active(r.c.errors)
    r.until(lambda o: o.request_ma < 0)
    assert r.o.mode == 'discharging'


def test_meter_stale_forbids_discharge_only():
    r = Rig()
    r.charging()
    r.i.meter_age_ms = 3001
    o = r.step()
    assert 'V2G-120' in r.codes() and o.limit_discharge_ma == 0 and o.limit_discharge_src == 'meter'
    assert o.request_ma == 32000 and o.contactor
    assert r.cmd('m1', 'soc_target', {'soc_pct': 30})[0]
    o = r.step(5)
    assert o.request_ma == 0 and o.mode == 'paused'
    r.i.meter_age_ms = 200
    r.until(lambda o: o.request_ma < 0)
    assert 'V2G-120' not in r.codes()


def test_bms_missing_forbids_discharge():
    r = Rig()
    r.charging()
    r.cmd('b1', 'soc_target', {'soc_pct': 30})
    r.until(lambda o: o.request_ma < 0)
    r.i.bms_age_ms = 1001
    o = r.step()
    assert o.request_ma >= 0 and 'V2G-130' in r.codes()
    assert o.limit_discharge_src == 'can'
    assert 'CAN_TIMEOUT_MS 1000' in r.events()[-1][3]


def test_discharge_stops_at_floor():
    r = Rig({'MIN_SOC_THRESHOLD': 20, 'RESERVE_MARGIN': 25, 'V2G_AVAILABLE_MARGIN': 10}, soc_pm=300)
    r.charging()
    # 30 % is below floor 25 % + margin 10 %: a discharge target is refused
    ok, code, msg, _ = r.cmd('f0', 'soc_target', {'soc_pct': 10})
    assert not ok and code == 'V2G-301' and '30.0 %' in msg
    r.i.bms_soc_pm = 350
    r.step()
    ok, _, msg, data = r.cmd('f1', 'soc_target', {'soc_pct': 10})
    assert ok and data['floor_pm'] == 250 and 'floor' in msg
    r.until(lambda o: o.request_ma < 0)
    soc = 350
    while soc > 240:
        soc -= 5
        r.i.bms_soc_pm = soc
        o = r.step()
        if soc <= 250:
            assert o.request_ma >= 0, soc
        else:
            assert o.request_ma < 0, soc
    assert 'V2G-301' in r.codes()
    assert r.o.limit_discharge_src == 'floor' and not r.o.v2g_available
    # back a little above the floor: still unavailable until floor + margin (35 %)
    r.i.bms_soc_pm = 340
    o = r.step(5)
    assert o.request_ma >= 0
    ok, code, msg, _ = r.cmd('f2', 'soc_target', {'soc_pct': 30})
    assert not ok and code == 'V2G-301' and '34.0 %' in msg
    assert r.c.setpoint.target_pm == 100        # the refused target did not replace the old one
    r.i.bms_soc_pm = 350
    r.until(lambda o: o.request_ma < 0)
    assert 'V2G-301' not in r.codes()


def test_discharge_capacity_reported():
    r = Rig(soc_pm=700)
    r.charging()
    assert r.o.discharge_capacity_wh == 30000     # (70 % - 20 %) * 60 kWh
    assert r.c.status()['discharge_capacity_wh'] == 30000


def test_thermal_derate_and_stop():
    r = Rig()
    r.charging()
    r.i.evse_temp_dc = 700           # half way between 65 and 75 C
    o = r.step()
    assert o.limit_charge_ma == 16000 and o.limit_charge_src == 'thermal' and o.request_ma == 16000
    assert o.pwm_pm == 266
    r.i.evse_temp_dc = 750
    o = r.step()
    assert 'V2G-009' in r.codes() and o.request_ma == 0
    n = r.until(lambda o: not o.contactor)
    assert n <= 2
    assert 'EVSE_TEMP_LIMIT_C' in r.events()[-1][3]
    r.i.evse_temp_dc = 710
    o = r.step(5)
    assert 'V2G-009' in r.codes() and not o.contactor
    assert o.pwm_pm == 1000            # stopped: no offer while the limit is 0
    r.i.evse_temp_dc = 699
    o = r.step()
    assert 'V2G-009' not in r.codes() and o.pwm_pm == 272   # derated offer, 16.3 A
    # the PWM was off, so the diode must be seen again with PWM running before closing
    assert r.until(lambda o: o.contactor) <= DIODE_SAMPLES + 1


def test_battery_temperature_derates_discharge_only():
    r = Rig()
    r.charging()
    r.i.bms_temp_dc = 500            # half way between 45 and 55 C
    o = r.step()
    assert o.limit_discharge_ma == 16000 and o.limit_discharge_src == 'thermal'
    assert o.limit_charge_ma == 32000
    r.i.bms_temp_dc = 550
    o = r.step()
    assert o.limit_discharge_ma == 0 and 'V2G-009' in r.codes() and o.request_ma == 32000


def test_idempotent_txn():
    r = Rig()
    r.charging()
    first = r.cmd('x1', 'soc_target', {'soc_pct': 60})
    assert first[0]
    again = r.cmd('x1', 'soc_target', {'soc_pct': 90})
    assert again == first
    assert r.c.setpoint.target_pm == 600
    bad = r.cmd('x2', 'limit', {'charge_a': -1})
    assert not bad[0] and bad[1] == 'V2G-400'
    assert r.cmd('x2', 'limit', {'charge_a': 10}) == bad
    assert r.c.csms_charge_ma > 100000
    assert r.c.journal.dirty


def test_command_validation_names_the_field():
    r = Rig()
    ok, code, msg, _ = r.cmd('v1', 'soc_target', {'soc_pct': 120})
    assert not ok and code == 'V2G-400' and msg.startswith('soc_pct')
    ok, code, msg, _ = r.cmd('v2', 'soc_target', {'soc_pct': True})
    assert not ok and msg.startswith('soc_pct')
    ok, code, msg, _ = r.cmd('v3', 'soc_target', {'soc_pct': 50, 'mode': 'turbo'})
    assert not ok and msg.startswith('mode')
    ok, code, msg, _ = r.cmd('v4', 'fly', {})
    assert not ok and code == 'V2G-400' and msg.startswith('op')
    ok, code, msg, _ = r.cmd('', 'status', {})
    assert not ok and msg.startswith('txn')
    ok, code, msg, _ = r.cmd('v5', 'limit', {'charge_a': 10, 'watts': 5})
    assert not ok and 'watts' in msg
    ok, code, msg, _ = r.cmd('v6', 'charge_only', {'on': 'yes'})
    assert not ok and msg.startswith('on')
    ok, code, msg, _ = r.cmd('v7', 'soc_target', [50])
    assert not ok and msg.startswith('args')
    assert r.c.setpoint.target_pm == -1 and r.c.csms_charge_ma > 100000


def test_csms_limit_and_pilot_minimum():
    r = Rig()
    r.charging()
    assert r.cmd('l1', 'limit', {'charge_a': 10, 'discharge_a': 5})[0]
    o = r.step()
    assert o.limit_charge_ma == 10000 and o.limit_charge_src == 'csms' and o.pwm_pm == 166
    assert o.limit_discharge_ma == 5000 and o.limit_discharge_src == 'csms'
    assert r.cmd('l2', 'limit', {'charge_a': 4})[0]
    o = r.step()
    # below 6 A no charging is offered: steady +12 V at once, never 5 % (digital)
    assert o.pwm_pm == 1000 and o.request_ma == 0
    o = r.step(30)
    # 0 A, named after the CSMS that asked for less than the pilot can offer
    assert o.limit_charge_ma == 0 and o.limit_charge_src == 'csms' and o.mode == 'paused'
    assert not o.contactor and o.request_ma == 0 and o.pwm_pm == 1000
    assert r.cmd('l3', 'limit', {'charge_a': None, 'discharge_a': None})[0]
    r.until(lambda o: o.request_ma == 32000)


def test_a_grid_cap_below_the_pilot_minimum_is_named_grid_not_pilot():
    # the enter-service ramp starts below 6 A: no offer, and the status says the grid holds it
    r = Rig()
    r.charging()
    r.c.grid = FixedGrid(3000, 0)
    o = r.step()
    assert o.limit_charge_ma == 0 and o.limit_charge_src == 'grid'
    assert o.limit_discharge_ma == 0 and o.limit_discharge_src == 'grid'
    r.c.grid = FixedGrid(12000, 12000)
    o = r.step()
    assert o.limit_charge_ma == 12000 and o.limit_charge_src == 'grid'


def test_heartbeat_loss_drops_the_csms_charge_limit_and_keeps_its_discharge_limit():
    # a discharge profile sets charge 0 A; the bridge stops; V2G-101 says charging goes on
    # at the pilot limit, so the stale 0 A (csms) must go, now and after a reset
    r = Rig()
    r.charging()
    assert r.cmd('p1', 'limit', {'charge_a': 0, 'discharge_a': 5})[0]
    o = r.step()
    assert o.limit_charge_ma == 0 and o.limit_charge_src == 'csms'
    r.hb = False
    r.until(lambda o: 'V2G-101' in E.active(o.errors), limit=1000)
    o = r.step()
    assert o.limit_charge_ma == 32000 and o.limit_charge_src == 'station'
    assert o.limit_discharge_ma == 0          # charge-only: the heartbeat forbids discharge
    assert r.c.csms_discharge_ma == 5000      # stricter, harmless: kept
    r.until(lambda o: o.request_ma == 32000)
    blob = r.c.state_dump()
    r2 = Rig()
    r2.c.state_load(0, blob)
    r2.charging()
    assert r2.o.limit_charge_src == 'station' and r2.o.limit_charge_ma == 32000


def test_a_saved_state_with_the_host_lost_does_not_bring_back_a_csms_charge_limit():
    # state written before the heartbeat loss dropped it (older firmware): dropped at load
    r = Rig()
    r.c.state_load(0, b'{"v": 1, "weld": false, "fallback": true, "charge_only": false, "stopped": false, '
                      b'"target_pm": -1, "mode": 0, "csms_charge_ma": 0, "csms_discharge_ma": 5000}')
    assert r.c.csms_charge_ma > 32000 and r.c.csms_discharge_ma == 5000
    r2 = Rig()
    r2.c.state_load(0, b'{"v": 1, "weld": false, "fallback": false, "charge_only": false, "stopped": false, '
                       b'"target_pm": -1, "mode": 0, "csms_charge_ma": 10000, "csms_discharge_ma": 5000}')
    assert r2.c.csms_charge_ma == 10000     # the host was alive: its limit stands until it says otherwise


def test_stop_and_start():
    r = Rig()
    r.charging()
    assert r.cmd('s1', 'stop')[0]
    o = r.step()
    assert o.request_ma == 0 and o.pwm_pm == 1000
    r.until(lambda o: not o.contactor)
    assert r.o.mode == 'paused'
    o = r.step(40)
    assert not o.contactor
    assert r.cmd('s2', 'start')[0]
    r.until(lambda o: o.request_ma > 0)


def test_charge_only_command():
    r = Rig()
    r.charging()
    r.cmd('c1', 'soc_target', {'soc_pct': 40})
    r.until(lambda o: o.request_ma < 0)
    assert r.cmd('c2', 'charge_only', {'on': True})[0]
    o = r.step()
    assert o.request_ma >= 0 and o.mode == 'charge_only' and o.limit_discharge_src == 'charge_only'
    assert r.cmd('c3', 'charge_only', {'on': False})[0]
    r.until(lambda o: o.request_ma < 0)


def test_config_set_refusal_keeps_settings():
    r = Rig()
    r.charging()
    before = r.c.cfg.to_json()
    ok, code, msg, data = r.cmd('k1', 'config_set', {'MAX_CHARGE_AMPS': 16, 'METER_POLL_MS': 1, 'X': 1})
    assert not ok and code == 'V2G-400'
    assert set(data['errors']) == {'METER_POLL_MS', 'X', 'MAX_DISCHARGE_AMPS', 'MAX_CHARGE_AMPS'} or \
        set(data['errors']) == {'METER_POLL_MS', 'X'}
    assert 'METER_POLL_MS' in msg and '100 to 10000 ms' in msg
    assert r.c.cfg.to_json() == before and not r.c.cfg_dirty
    assert r.step().pwm_pm == 533
    ok, code, msg, data = r.cmd('k2', 'config_set', {'MAX_CHARGE_AMPS': 16, 'MAX_DISCHARGE_AMPS': 16})
    assert ok and sorted(data['changed']) == ['MAX_CHARGE_AMPS', 'MAX_DISCHARGE_AMPS']
    assert r.c.cfg_dirty and data['cfg_hash'] == r.c.cfg.config_hash()
    o = r.step()
    assert o.pwm_pm == 266 and o.request_ma == 16000
    ok, _, _, data = r.cmd('k3', 'config_get', {'keys': ['MAX_CHARGE_AMPS']})
    assert ok and data['values'] == {'MAX_CHARGE_AMPS': 16}
    ok, code, msg, _ = r.cmd('k4', 'config_get', {'keys': ['NOPE']})
    assert not ok and 'NOPE' in msg


def test_grid_slot():
    r = Rig()
    r.charging()
    r.c.grid = FixedGrid(20000, 8000)
    o = r.step()
    assert o.limit_charge_ma == 20000 and o.limit_charge_src == 'grid' and o.request_ma == 20000
    r.cmd('g1', 'soc_target', {'soc_pct': 40})
    r.until(lambda o: o.request_ma == -8000)
    r.c.grid = FixedGrid(1000000, 1000000, 3000, 0)    # over-frequency: droop takes 3 A more
    r.until(lambda o: o.request_ma == -32000 + 3000)
    r.c.grid = FixedGrid(0, 0, 0, E.E505)     # a grid code is a trip: its code is shown
    o = r.step()
    assert 'V2G-505' in r.codes() and not o.contactor and o.request_ma == 0
    r.c.grid = FixedGrid(0, 0, 0, E.E503)
    o = r.step()
    assert not o.contactor and o.request_ma == 0 and 'V2G-503' in r.codes()


def test_status_and_events_drained():
    r = Rig()
    r.charging()
    ok, code, msg, data = r.cmd('st', 'status')
    assert ok and data['mode'] == 'charging' and data['limit_charge_ma'] == 32000
    r.i.meter_age_ms = 5000
    r.step()
    ev = r.events()
    assert len(ev) == 1 and ev[0][1] == 'V2G-120' and '5.0 s' in ev[0][3]
    assert len(r.events()) == 0
    assert r.c.log.entries()[-1][1] == 'V2G-120'


def test_step_allocates_nothing():
    r = Rig()
    r.charging()
    r.cmd('h1', 'soc_target', {'soc_pct': 60})
    r.until(lambda o: o.request_ma < 0)
    r.i.cp_high_mv = B_MV
    r.step(3)
    r.i.cp_high_mv = C_MV
    r.step(10)
    r.events()
    i = r.i
    micropython.heap_lock()
    try:
        for k in range(1000):
            # pause/resume, derating and SoC movement without raising a code
            if k % 200 == 100:
                i.cp_high_mv = B_MV
            elif k % 200 == 110:
                i.cp_high_mv = C_MV
            i.evse_temp_dc = 600 + (k % 100)
            i.bms_soc_pm = 700 - (k % 50)
            r.step()
    finally:
        micropython.heap_unlock()
    assert r.o.contactor and r.o.request_ma < 0
    assert len(r.events()) == 0


def test_state_survives_reset():
    r = Rig()
    r.charging()
    assert r.cmd('p1', 'soc_target', {'soc_pct': 45, 'mode': 'discharge'})[0]
    assert r.cmd('p2', 'limit', {'charge_a': 20})[0]
    assert r.c.state_dirty
    r.welded = True
    r.i.cp_high_mv = B_MV
    r.until(lambda o: o.errors & E.E011)
    blob = r.c.state_dump()
    assert not r.c.state_dirty
    # a fresh controller after the reset: the latch and the host's choices come back
    r2 = Rig()
    r2.c.state_load(0, blob)
    assert r2.c.weld and 'V2G-011' in E.active(r2.c.errors)
    assert r2.c.setpoint.target_pm == 450 and r2.c.csms_charge_ma == 20000
    r2.i.cp_high_mv = C_MV
    o = r2.step(20)
    assert not o.contactor and o.mode == 'fault'


def test_fallback_survives_reset_and_bad_state_refused():
    r = Rig({'HEARTBEAT_TIMEOUT_S': 1})
    r.charging()
    r.hb = False
    r.until(lambda o: o.errors & E.E101)
    blob = r.c.state_dump()
    r2 = Rig()
    r2.c.state_load(0, blob)
    assert r2.c.fallback and 'V2G-101' in E.active(r2.c.errors)
    r2.cmd('q1', 'soc_target', {'soc_pct': 30})
    o = r2.charging()
    assert o.request_ma > 0 and o.mode == 'charge_only'
    r3 = Rig()
    raises(ValueError, r3.c.state_load, 0, b'{"v": 1, "weld": 1}')
    raises(ValueError, r3.c.state_load, 0, b'{"v": 2}')
    assert not r3.c.weld and r3.c.setpoint.target_pm == -1


def test_no_meter_yet_at_boot_forbids_discharge_but_reports_only_after_the_timeout():
    r = Rig()
    r.i.meter_ok = False
    r.i.meter_age_ms = 1 << 29          # never read since boot
    r.step(1)
    assert r.o.limit_discharge_ma == 0 and not (r.o.errors & E.E120)
    r.step(3000 // CONTROL_PERIOD_MS + 1)   # METER_STALE_S = 3 s by default
    assert r.o.errors & E.E120 and r.o.limit_discharge_ma == 0


def test_bms_gets_its_timeout_after_plug_in_before_v2g_130():
    r = Rig()
    r.step(2)
    r.i.bms_age_ms = 1 << 29            # no frame from this vehicle yet
    r.i.cp_high_mv = B_MV
    r.step(4)
    assert not (r.o.errors & E.E130) and r.o.limit_discharge_ma == 0
    r.step(1000 // CONTROL_PERIOD_MS)   # CAN_TIMEOUT_MS = 1000
    assert r.o.errors & E.E130
    r.i.cp_high_mv = A_MV               # unplugged: cleared
    r.step(2)
    assert not (r.o.errors & E.E130)


def test_a_straight_to_c_without_diode_never_closes():
    r = Rig()
    r.step(2)
    r.i.cp_low_mv = 6000            # no diode: the low side follows the high side
    r.i.cp_high_mv = C_MV
    for _ in range(40):
        o = r.step()
        assert not o.contactor and o.request_ma == 0, r.t
        if o.errors & E.E010:
            break
    assert 'V2G-010' in r.codes() and o.pwm_pm == 0
    assert 'diode' in r.events()[-1][3]


def test_a_straight_to_c_runs_pwm_before_closing():
    # rule: close only after DIODE_SAMPLES good low-side readings with PWM running,
    # so from A the contactor waits two steps more than from B (still far inside 3 s)
    r = Rig()
    r.step(2)
    r.i.cp_high_mv = C_MV
    seen_pwm_open = False
    n = 0
    while not r.o.contactor:
        o = r.step()
        n += 1
        assert n < 20
        if not o.contactor and 0 < o.pwm_pm < 1000:
            seen_pwm_open = True
    assert seen_pwm_open and n == 5 and n * CONTROL_PERIOD_MS < 3000
    assert r.o.mode == 'charging' and r.codes() == []


def test_diode_lost_during_debounce_blocks_closing():
    r = Rig()
    r.i.cp_high_mv = B_MV
    r.step(3)
    r.i.cp_high_mv = C_MV
    r.i.cp_low_mv = 6000
    for _ in range(10):
        assert not r.step().contactor
    assert 'V2G-010' in r.codes()


BAD_ARGS = (
    ('config_get', {'keys': [[1]]}, 'keys'),
    ('config_get', {'keys': [{'a': 1}]}, 'keys'),
    ('config_get', {'keys': [1, 'MAX_CHARGE_AMPS']}, 'keys'),
    ('config_get', {'keys': 'MAX_CHARGE_AMPS'}, 'keys'),
    ('config_get', {'keys': [10 ** 5000]}, 'keys'),
    ('config_set', {1: 2, 'MAX_CHARGE_AMPS': 16}, '1'),
    ('config_set', {'MAX_CHARGE_AMPS': float('inf')}, 'MAX_CHARGE_AMPS'),
    ('config_set', {'MAX_CHARGE_AMPS': float('nan')}, 'MAX_CHARGE_AMPS'),
    ('config_set', {'MAX_CHARGE_AMPS': -float('inf')}, 'MAX_CHARGE_AMPS'),
    ('config_set', {'MAX_CHARGE_AMPS': [16]}, 'MAX_CHARGE_AMPS'),
    ('config_set', {'MAX_CHARGE_AMPS': 10 ** 5000}, 'MAX_CHARGE_AMPS'),
    ('config_set', {'METER_ADDRESS': True}, 'METER_ADDRESS'),
    ('config_set', {'PHASES': float('inf')}, 'PHASES'),
    ('soc_target', {'soc_pct': float('inf')}, 'soc_pct'),
    ('soc_target', {'soc_pct': float('nan')}, 'soc_pct'),
    ('soc_target', {'soc_pct': [50]}, 'soc_pct'),
    ('soc_target', {'soc_pct': 10 ** 5000}, 'soc_pct'),
    ('soc_target', {'soc_pct': True}, 'soc_pct'),
    ('soc_target', {'soc_pct': 50, 'mode': ['auto']}, 'mode'),
    ('soc_target', {'soc_pct': 50, 'mode': 10 ** 5000}, 'mode'),
    ('soc_target', {1: 50}, '1'),
    ('limit', {'charge_a': float('inf')}, 'charge_a'),
    ('limit', {'discharge_a': -float('inf')}, 'discharge_a'),
    ('limit', {'charge_a': float('nan')}, 'charge_a'),
    ('limit', {'charge_a': [10]}, 'charge_a'),
    ('limit', {'charge_a': 10 ** 5000}, 'charge_a'),
    ('limit', {'discharge_a': False}, 'discharge_a'),
    ('limit', {(1, 2): 5}, 'a tuple'),
    ('charge_only', {'on': [True]}, 'on'),
    ('charge_only', {'on': 10 ** 5000}, 'on'),
    ('charge_only', {'on': 1}, 'on'),
    ('start', {1: 2}, '1'),
    ('stop', {10 ** 5000: 1}, 'a too large integer'),
    ('clear_fault', {None: 1}, 'None'),
    ('status', {'x' * 500: 1}, 'xxxx'),
    ([1], {}, 'op'),
    (10 ** 5000, {}, 'op'),
)


def test_bad_command_values_refused_naming_the_field():
    r = Rig()
    r.charging()
    before = r.c.cfg.config_hash()
    k = 0
    for op, args, field in BAD_ARGS:
        k += 1
        res = r.cmd('bad{}'.format(k), op, args)
        ok, code, msg, data = res
        assert not ok and code == 'V2G-400', (op, args, res)
        assert field in msg, (op, msg)
        if op != 'config_set':
            assert data == {}
        assert len(msg) < 300, msg
    assert r.c.cfg.config_hash() == before and r.c.setpoint.target_pm == -1
    assert r.c.csms_charge_ma > 100000 and not r.c.cmd_charge_only and not r.c.stopped
    o = r.step()
    assert o.contactor and o.request_ma == 32000


def test_pop_events_every_tick_allocates_nothing():
    # the shell calls pop_events() after every step, with and without a grid module
    from core.grid import GridProtection
    for with_grid in (False, True):
        r = Rig()
        if with_grid:
            r.c.grid = GridProtection.from_config(r.cfg, start_in_service=True)
        r.charging()
        r.step(5)
        r.events()
        micropython.heap_lock()
        try:
            for _ in range(300):
                r.step()
                ev = r.events()
        finally:
            micropython.heap_unlock()
        assert len(ev) == 0 and r.o.contactor


def _droop_rig(droop_ma):
    r = Rig(soc_pm=500)
    r.c.grid = FixedGrid(200000, 200000, droop_ma=droop_ma)
    return r


def test_droop_never_reverses_charge_only_target_into_discharge():
    # mode 'charge' (charge-only direction): an under-frequency droop larger than the
    # charge current lowers charging to zero, never below
    r = _droop_rig(0)
    assert r.cmd('m1', 'soc_target', {'soc_pct': 90, 'mode': 'charge'})[0]
    r.charging()
    r.c.grid = FixedGrid(200000, 200000, droop_ma=-60000)
    for _ in range(100):
        o = r.step()
        assert o.request_ma >= 0, o.request_ma
    assert o.request_ma == 0
    # holding at the target in mode 'charge': the droop does not wake it as a source
    assert r.cmd('m2', 'soc_target', {'soc_pct': 50, 'mode': 'charge'})[0]
    for _ in range(100):
        assert r.step().request_ma >= 0


def test_droop_never_reverses_charge_only_fallback_into_discharge():
    r = _droop_rig(0)
    assert r.cmd('c1', 'charge_only', {'on': True})[0]
    r.charging()
    r.c.grid = FixedGrid(200000, 200000, droop_ma=-60000)
    for _ in range(100):
        assert r.step().request_ma >= 0
    assert r.o.request_ma == 0


def test_droop_may_reverse_in_auto_mode():
    r = _droop_rig(0)
    assert r.cmd('a1', 'soc_target', {'soc_pct': 90})[0]
    r.charging()
    r.c.grid = FixedGrid(200000, 200000, droop_ma=-60000)
    r.step(100)
    assert r.o.request_ma < 0 and r.o.contactor


def test_event_log_records_pilot_and_mode_changes():
    r = Rig()
    r.charging()
    r.i.cp_high_mv = B_MV
    r.step(2)
    logged = [(code, on, msg) for t, code, on, msg in r.c.log.entries() if code is None]
    msgs = [m for _, _, m in logged]
    # the first step is where the station starts (here the EV is already plugged in): not a change
    assert msgs == ['pilot state C', 'mode charging', 'pilot state B', 'mode connected'], msgs
    assert all(on is True for _, on, _ in logged)
    # state changes stay in the log; the link's event stream carries error codes only
    assert all(e[1] is not None for e in r.events())


def test_event_log_records_every_refused_command():
    r = Rig()
    r.step(2)
    n = len(r.c.log)
    assert not r.cmd('r1', 'soc_target', {'soc_pct': 150})[0]
    assert not r.cmd('r2', 'teleport', {})[0]
    assert not r.cmd('', 'stop')[0]
    assert r.cmd('r3', 'stop')[0]                      # accepted: not a refusal entry
    assert not r.cmd('r1', 'soc_target', {'soc_pct': 150})[0]   # replay: nothing new happens
    new = r.c.log.entries()[n:]
    assert [(e[1], e[2]) for e in new] == [('V2G-400', True)] * 3, new
    assert new[0][3].startswith('refused soc_target: soc_pct')
    assert new[1][3].startswith('refused teleport: op: unknown operation')
    assert new[2][3].startswith('refused stop: txn')


def test_event_log_entries_carry_the_boot_and_old_logs_still_load():
    from core.eventlog import EventLog
    log = EventLog(4)
    log.boot = 3
    log.append(10, 'V2G-101', True, 'lost')
    log.append(20, None, True, 'mode idle')
    assert log.rows() == [(10, 'V2G-101', True, 'lost', 3), (20, None, True, 'mode idle', 3)]
    assert log.entries() == [(10, 'V2G-101', True, 'lost'), (20, None, True, 'mode idle')]
    other = EventLog(4)
    other.load(log.dump())
    assert other.rows() == log.rows()
    # a log written before entries carried the boot: boot 0 (unknown)
    old = EventLog(4)
    old.load(b'{"v": 1, "total": 1, "events": [[5, "V2G-009", true, "hot"]]}')
    assert old.rows() == [(5, 'V2G-009', True, 'hot', 0)]
    raises(ValueError, old.load, b'{"v": 1, "events": [[5, "V2G-009", true, "hot", -2]]}')
    raises(ValueError, old.load, b'{"v": 1, "events": [[5, "V2G-009", true, "hot", "x"]]}')
    assert old.rows() == [(5, 'V2G-009', True, 'hot', 0)]


def test_five_percent_only_while_the_ev_is_directed_over_can():
    # plain charging under 6 A (no target): no offer, steady +12 V, in B and in C
    r = Rig(soc_pm=500)
    assert r.cmd('p1', 'limit', {'charge_a': 5})[0]
    r.i.cp_high_mv = B_MV
    assert r.step(2).pwm_pm == 1000
    r.i.cp_high_mv = C_MV
    o = r.step(10)
    assert o.pwm_pm == 1000 and not o.contactor and o.mode == 'paused'
    # a charge target toward which the station may not charge: still no offer
    assert r.cmd('p2', 'soc_target', {'soc_pct': 80})[0]
    assert r.step(3).pwm_pm == 1000
    # a discharge toward the target is asked over CAN: 5 %, even with charging capped
    assert r.cmd('p3', 'soc_target', {'soc_pct': 30})[0]
    r.until(lambda o: o.request_ma < 0)
    assert r.o.pwm_pm == 50 and r.o.mode == 'discharging'
    # holding at the target is also directed over CAN
    r.i.bms_soc_pm = 300
    r.until(lambda o: o.direction == 0)
    assert r.o.pwm_pm == 50
    # the charge limit back above 6 A and a charge target: the PWM offer again
    assert r.cmd('p4', 'limit', {'charge_a': None})[0]
    assert r.cmd('p5', 'soc_target', {'soc_pct': 60})[0]
    r.until(lambda o: o.request_ma > 0)
    assert r.o.pwm_pm == 533


def test_slow_host_round_trip_raises_and_clears_v2g_110():
    r = Rig({'HOST_LATENCY_WARN_MS': 100})
    r.charging()
    r.events()
    r.c.report_rtt(r.t, 100)                 # at the threshold: fine
    assert 'V2G-110' not in E.active(r.step().errors) and r.events() == ()
    r.c.report_rtt(r.t, 250)
    o = r.step()
    assert 'V2G-110' in E.active(o.errors)
    ev = r.events()
    assert [(e[1], e[2]) for e in ev] == [('V2G-110', True)]
    assert '250 ms' in ev[0][3] and '100 ms' in ev[0][3]
    r.c.report_rtt(r.t, 300)                 # still slow: raised once, not again
    r.step()
    assert r.events() == ()
    # a warning only: charging carries on
    assert o.contactor and o.request_ma == 32000
    r.c.report_rtt(r.t, 40)
    o = r.step()
    assert 'V2G-110' not in E.active(o.errors)
    assert [(e[1], e[2]) for e in r.events()] == [('V2G-110', False)]


def test_config_set_answer_carries_the_notes_on_what_the_settings_cannot_do():
    r = Rig()
    # a 2400-baud meter line is too slow for the 160 ms stages of the IEEE profiles
    ok, _, _, data = r.cmd('n1', 'config_set', {'GRID_PROFILE': 'IEEE1547_CAT_II_60HZ', 'METER_BAUD': 2400})
    assert ok and any('METER_BAUD 2400' in n and 'can trip 550 ms after' in n for n in data['notes'])
    ok, _, _, data = r.cmd('n2', 'config_set', {'METER_BAUD': 9600})
    assert ok and not any('can trip' in n for n in data['notes'])


# -- cooling loop (V2G-013) --------------------------------------------------------------------

FB_STEPS = 5000 // CONTROL_PERIOD_MS + 2     # COOLING_FEEDBACK_S and the step that sees the silence


def test_pump_fails_while_discharging_above_the_uncooled_rating_is_a_hard_fault():
    r = Rig()
    r.charging()
    assert r.cmd('cd1', 'soc_target', {'soc_pct': 40})[0]
    r.until(lambda o: o.request_ma == -32000)
    assert r.o.cooling and r.o.cooling_state == 'running'
    r.events()
    r.pump_ok = False
    n = r.until(lambda o: o.errors & E.E013, limit=FB_STEPS + 5)
    assert FB_STEPS - 2 <= n <= FB_STEPS
    o = r.o
    # the step that finds it opens the contactor: session ended, nothing in either direction
    assert not o.contactor and o.request_ma == 0 and o.mode == 'fault'
    assert o.limit_charge_ma == 0 and o.limit_discharge_ma == 0 and o.cooling_state == 'tripped'
    ev = r.events()
    assert [e[1] for e in ev] == ['V2G-013']
    assert 'discharging 32.0 A above COOLING_UNCOOLED_AMPS 16.0 A' in ev[0][3] and 'contactor open' in ev[0][3]
    # latched: the pump stays commanded, the station stays open while the loop is down
    o = r.step(2000)
    assert not o.contactor and o.cooling and 'V2G-013' in r.codes()
    # the pump is back: cleared after COOLING_FEEDBACK_S of feedback, the discharge resumes
    r.pump_ok = True
    r.until(lambda o: not o.errors & E.E013, limit=FB_STEPS + 5)
    assert [e[2] for e in r.events()] == [False]
    r.until(lambda o: o.request_ma == -32000)
    assert r.o.contactor and r.o.mode == 'discharging'


def test_pump_fails_while_charging_derates_to_the_uncooled_rating():
    r = Rig()
    r.charging()
    assert r.o.request_ma == 32000 and r.o.cooling
    r.pump_ok = False
    r.until(lambda o: o.errors & E.E013, limit=FB_STEPS + 5)
    o = r.o
    assert o.contactor and o.request_ma == 16000 and o.mode == 'charging'
    assert o.limit_charge_ma == 16000 and o.limit_charge_src == 'cooling'
    assert o.limit_discharge_ma == 16000 and o.limit_discharge_src == 'cooling'
    assert 'both directions derated' in r.events()[0][3]
    # a discharge asked now stays within the uncooled rating: no hard fault
    assert r.cmd('cd2', 'soc_target', {'soc_pct': 40})[0]
    r.until(lambda o: o.request_ma == -16000)
    o = r.step(400)
    assert o.contactor and o.request_ma == -16000 and o.cooling_state == 'derated'
    r.pump_ok = True
    r.until(lambda o: not o.errors & E.E013, limit=FB_STEPS + 5)
    r.until(lambda o: o.request_ma == -32000)


def test_low_current_needs_no_cooling():
    r = Rig({'MAX_CHARGE_AMPS': 10, 'MAX_DISCHARGE_AMPS': 10})
    r.pump_ok = False
    r.charging()
    assert r.cmd('cd3', 'soc_target', {'soc_pct': 40})[0]
    o = r.step(600)
    assert o.request_ma == -10000 and not o.cooling and o.cooling_state == 'off' and r.codes() == []
    # hot stage: the temperature commands the pump, and at 10 A its failure is a derate
    r.i.evse_temp_dc = 520
    r.until(lambda o: o.errors & E.E013, limit=FB_STEPS + 5)
    assert r.o.contactor and r.o.request_ma == -10000 and r.o.cooling_state == 'derated'


def test_board_without_cooling_never_faults():
    r = Rig()
    r.cfg = config.validate({}, board={'cooling': False})
    r.c.apply_config(r.cfg)
    r.pump_ok = False
    r.charging()
    assert r.cmd('cd4', 'soc_target', {'soc_pct': 40})[0]
    o = r.step(600)
    assert o.request_ma == -32000 and not o.cooling and o.cooling_state == 'none' and r.codes() == []
    assert config.NOTE_NO_COOLING in r.cfg.notes()
    assert config.NOTE_NO_COOLING not in config.validate({}).notes()


def test_step_allocates_nothing_while_derated_by_the_cooling():
    # (raising and clearing V2G-013 builds its message: that is the one allocation allowed)
    r = Rig()
    r.charging()
    r.step(5)
    r.pump_ok = False
    r.until(lambda o: o.errors & E.E013, limit=FB_STEPS + 5)
    r.events()
    micropython.heap_lock()
    try:
        for _ in range(400):
            r.step()
    finally:
        micropython.heap_unlock()
    assert r.o.cooling_state == 'derated' and r.o.request_ma == 16000 and r.o.cooling


def test_state_change_texts_are_constants_naming_each_mode_and_pilot_state():
    # kept as literal texts (no heap when frozen or in ROMFS): one per mode, in MODES order,
    # and one per pilot level A-F plus UNKNOWN, which reads as F
    from core import controller as ctl
    assert ctl._MODE_LOG == tuple('mode ' + m for m in ctl.MODES)
    assert ctl._PILOT_LOG == tuple('pilot state ' + x for x in 'ABCDEFF')


# ---------------------------------------------------------------- the driver's departure

def test_a_departure_with_the_target_is_kept_as_a_deadline_and_reported_counting_down():
    r = Rig()
    r.charging()
    ok, code, msg, data = r.cmd('d1', 'soc_target', {'soc_pct': 80, 'departure_s': 3600})
    assert ok and data['departure_s'] == 3600 and 'departure in 3600 s' in msg
    assert r.c.status()['departure_s'] == 3600
    r.step(20)                                    # one second later
    assert r.c.status()['departure_s'] == 3599
    r.step(1)                                     # 50 ms more: rounded up, still 3599 s
    assert r.c.status()['departure_s'] == 3599
    assert r.c.setpoint.target_pm == 800


def test_a_departure_passed_or_beyond_six_days_is_refused_naming_it_and_changes_nothing():
    from core import setpoint as S
    r = Rig()
    r.charging()
    assert r.cmd('d1', 'soc_target', {'soc_pct': 80, 'departure_s': 600})[0]
    for n, (dep, why) in enumerate(((0, 'passed'), (-30, 'passed'), (S.DEPARTURE_MAX_S + 1, 'more than 6 days'),
                                    ('17:30', 'whole number'), (90.5, 'whole number'), (True, 'whole number'))):
        ok, code, msg, _ = r.cmd('dx{}'.format(n), 'soc_target', {'soc_pct': 30, 'departure_s': dep})
        assert not ok and code == 'V2G-400' and msg.startswith('departure_s') and why in msg, msg
    assert r.c.setpoint.target_pm == 800 and r.c.status()['departure_s'] == 600
    ok, _, _, data = r.cmd('d2', 'soc_target', {'soc_pct': 80, 'departure_s': S.DEPARTURE_MAX_S})
    assert ok and r.c.status()['departure_s'] == S.DEPARTURE_MAX_S


def test_a_target_without_a_departure_clears_it():
    r = Rig()
    r.charging()
    assert r.cmd('d1', 'soc_target', {'soc_pct': 80, 'departure_s': 600})[0]
    ok, _, _, data = r.cmd('d2', 'soc_target', {'soc_pct': 70})
    assert ok and data['departure_s'] is None and r.c.status()['departure_s'] is None
    assert r.cmd('d3', 'soc_target', {'soc_pct': 70, 'departure_s': 600})[0]
    assert r.cmd('d4', 'soc_target', {'soc_pct': 70, 'departure_s': None})[0]
    assert r.c.status()['departure_s'] is None


def test_a_repeated_departure_txn_gets_the_first_answer_and_changes_nothing():
    r = Rig()
    r.charging()
    first = r.cmd('d1', 'soc_target', {'soc_pct': 80, 'departure_s': 600})
    r.step(40)
    assert r.cmd('d1', 'soc_target', {'soc_pct': 80, 'departure_s': 600}) == first
    assert r.c.status()['departure_s'] == 598          # not restarted by the repeat
    assert r.cmd('d2', 'soc_target', {'soc_pct': 80})[0]
    assert r.cmd('d1', 'soc_target', {'soc_pct': 80, 'departure_s': 600}) == first
    assert r.c.status()['departure_s'] is None         # nor brought back
    bad = r.cmd('d3', 'soc_target', {'soc_pct': 80, 'departure_s': 0})
    assert r.cmd('d3', 'soc_target', {'soc_pct': 80, 'departure_s': 0}) == bad


def test_a_departure_that_passes_is_dropped_and_the_step_stays_allocation_free():
    r = Rig()
    r.charging()
    assert r.cmd('d1', 'soc_target', {'soc_pct': 80, 'departure_s': 2})[0]
    r.events()
    micropython.heap_lock()
    try:
        r.step(39)                                # a departure set: still nothing allocated
    finally:
        micropython.heap_unlock()
    assert r.c.status()['departure_s'] == 1
    r.step(1)
    assert r.c.status()['departure_s'] is None and not r.c.setpoint.departure_set
    assert r.c.setpoint.target_pm == 800          # the target stays


def test_a_departure_across_the_tick_wrap():
    from core import setpoint as S
    from core import ticks
    r = Rig()

    def steps(n):          # the board's clock: wrapping at 2**30 ms
        for _ in range(n):
            r.t = ticks.add(r.t, CONTROL_PERIOD_MS)
            r.c.heartbeat(r.t)
            r.c.step(r.t, r.i)
    r.t = ticks.PERIOD - 1000
    steps(1)
    assert r.cmd('w1', 'soc_target', {'soc_pct': 80, 'departure_s': 2})[0]   # due 1050 ms past the wrap
    steps(20)
    assert r.t < 1000 and r.c.status()['departure_s'] == 1
    steps(20)
    assert r.c.status()['departure_s'] is None and not r.c.setpoint.departure_set
    # the furthest taken, six days, reads six days ahead (not passed) on the wrapped clock
    assert r.cmd('w2', 'soc_target', {'soc_pct': 80, 'departure_s': S.DEPARTURE_MAX_S})[0]
    steps(1)
    assert r.c.status()['departure_s'] == S.DEPARTURE_MAX_S and r.c.setpoint.departure_set
