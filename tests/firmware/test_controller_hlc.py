"""The `hlc` command: the gateway's ISO 15118 session and the pilot's 5 % duty (docs/secc.md)."""
from core import errors as E
from core.controller import CONTROL_PERIOD_MS, HLC_TIMEOUT_MS
from core.pilot import PWM_DIGITAL, duty_for_ma
from test_controller import A_MV, B_MV, C_MV, Rig


def plugged(soc_pm=800):
    r = Rig(soc_pm=soc_pm)
    r.i.cp_high_mv = B_MV
    r.step(4)
    return r


def test_hlc_on_sets_5_percent_and_off_goes_back_to_nominal():
    r = plugged()
    assert r.o.pwm_pm != PWM_DIGITAL
    res = r.cmd('h1', 'hlc', {'on': True})
    assert res[0], res
    assert r.step().pwm_pm == PWM_DIGITAL
    r.i.cp_high_mv = C_MV
    r.until(lambda o: o.request_ma > 0)
    assert r.o.pwm_pm == PWM_DIGITAL        # charging stays digital while the SECC runs it
    assert r.cmd('h2', 'hlc', {'on': False})[0]
    o = r.step()
    assert o.pwm_pm == duty_for_ma(o.limit_charge_ma)
    assert not (o.errors & E.E150)


def test_hlc_keepalive_missing_is_v2g_150_charge_only_nominal_duty():
    r = plugged()
    r.i.cp_high_mv = C_MV
    r.cmd('t', 'soc_target', {'soc_pct': 30, 'mode': 'discharge'})
    assert r.cmd('h1', 'hlc', {'on': True})[0]
    t0 = r.t
    r.until(lambda o: o.request_ma < 0)
    r.until(lambda o: o.errors & E.E150, limit=HLC_TIMEOUT_MS // CONTROL_PERIOD_MS + 5)
    assert HLC_TIMEOUT_MS < r.t - t0 <= HLC_TIMEOUT_MS + 2 * CONTROL_PERIOD_MS
    o = r.o
    assert o.limit_discharge_ma == 0 and o.request_ma >= 0
    assert o.mode == 'charge_only'
    assert o.pwm_pm != PWM_DIGITAL
    st = r.c.status()
    assert st['charge_only'] and st['hlc_failed'] and not st['hlc']
    # no new session on this plug-in; the code names the safe state
    res = r.cmd('h2', 'hlc', {'on': True})
    assert not res[0] and res[1] == 'V2G-150'
    assert r.step().pwm_pm != PWM_DIGITAL
    # unplugging clears it
    r.i.cp_high_mv = A_MV
    r.step(2)
    assert not (r.o.errors & E.E150)
    r.i.cp_high_mv = B_MV
    r.step(4)
    assert r.cmd('h3', 'hlc', {'on': True})[0]


def test_keepalives_hold_the_session():
    r = plugged()
    for k in range(3 * HLC_TIMEOUT_MS // 1000):
        assert r.cmd('k{}'.format(k), 'hlc', {'on': True, 'soc_pct': 50})[0]
        r.step(1000 // CONTROL_PERIOD_MS)
    assert not (r.o.errors & E.E150) and r.o.pwm_pm == PWM_DIGITAL


def test_hlc_failed_reported_by_the_secc():
    r = plugged()
    r.cmd('h1', 'hlc', {'on': True})
    r.step()
    res = r.cmd('h2', 'hlc', {'on': False, 'failed': 'SessionSetup timeout'})
    assert res[0], res
    o = r.step()
    assert o.errors & E.E150 and o.pwm_pm != PWM_DIGITAL and o.limit_discharge_ma == 0
    msgs = [e[3] for e in r.c.pop_events() if e[1] == 'V2G-150']
    assert msgs and 'SessionSetup timeout' in msgs[0] and 'charge only' in msgs[0]


def test_hlc_soc_is_used_only_without_a_bms_frame():
    r = plugged(soc_pm=600)
    r.cmd('h1', 'hlc', {'on': True, 'soc_pct': 42.5})
    assert r.step().soc_pm == 600            # the BMS frame wins
    r.i.bms_age_ms = 10 ** 6
    assert r.cmd('h2', 'hlc', {'on': True, 'soc_pct': 42.5})[0]
    o = r.step()
    assert o.soc_pm == 425
    assert o.limit_discharge_ma == 0         # no CAN: still no discharge
    r.cmd('h3', 'hlc', {'on': False})
    assert r.step().soc_pm == -1


def test_hlc_bad_input_changes_nothing():
    r = plugged()
    bad = ({}, {'on': 1}, {'on': True, 'soc_pct': 101}, {'on': True, 'soc_pct': 'x'},
           {'on': True, 'failed': 'x'}, {'on': False, 'failed': ''}, {'on': True, 'x': 1})
    for k, args in enumerate(bad):
        res = r.cmd('b{}'.format(k), 'hlc', args)
        assert not res[0] and res[1] == 'V2G-400', (args, res)
    assert not r.c.hlc and r.step().pwm_pm != PWM_DIGITAL
    # no vehicle: refused
    r.i.cp_high_mv = A_MV
    r.step(2)
    res = r.cmd('a1', 'hlc', {'on': True})
    assert not res[0] and 'no vehicle' in res[2]


def test_hlc_is_not_journaled():
    r = plugged()
    n = len(r.c.journal)
    r.c.state_dirty = False
    assert r.cmd('j1', 'hlc', {'on': True})[0]
    assert not r.c.state_dirty
    assert 'j1' not in r.c.journal and len(r.c.journal) == n
