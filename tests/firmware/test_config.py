import json

from fwtest import in_dir, raises, scratch, wipe

from core import config as C


def refused(changes, current=None, board=None):
    cfg, errs = C.check(changes, current, board)
    assert cfg is None
    return dict(errs)


def test_defaults_cover_every_key():
    cfg = C.validate({})
    for key in C.SCHEMA:
        assert cfg.get(key) == C.SCHEMA[key][3], key
    assert cfg.max_charge_ma == 32000 and cfg.max_discharge_ma == 32000
    assert cfg.floor_pm == 200
    assert cfg.heartbeat_timeout_ms == 10000
    assert cfg.nominal_mhz == 60000


def test_milli_units():
    cfg = C.validate({'FREQ_DEADBAND_HZ': 0.036, 'EVSE_TEMP_DERATE_C': 62.5, 'FREQ_RESPONSE_S': 0.2,
                      'MAX_CHARGE_AMPS': 16.5, 'MAX_DISCHARGE_AMPS': 10, 'MIN_SOC_THRESHOLD': 25.5,
                      'RESERVE_MARGIN': 30, 'GRID_PROFILE': 'EN50549_50HZ', 'NOMINAL_VOLTAGE_V': 230,
                      'METER_STALE_S': 2})
    assert cfg.deadband_mhz == 36
    assert cfg.evse_derate_dc == 625
    assert cfg.response_ms == 200
    assert cfg.max_charge_ma == 16500 and cfg.max_discharge_ma == 10000
    assert cfg.min_soc_pm == 255 and cfg.reserve_pm == 300 and cfg.floor_pm == 300
    assert cfg.nominal_mhz == 50000 and cfg.nominal_mv == 230000
    assert cfg.meter_stale_ms == 2000
    assert cfg.droop_mpct == 5000
    # the JSON values are kept as given
    assert cfg.get('FREQ_DEADBAND_HZ') == 0.036 and cfg.to_json()['MAX_CHARGE_AMPS'] == 16.5


def test_every_numeric_range_edge():
    for key in C.KEYS:
        kind, lo, hi, default, unit, _ = C.SCHEMA[key]
        if kind not in (C.INT, C.NUM):
            continue
        below = lo - (1 if kind == C.INT else 0.001)
        above = hi + (1 if kind == C.INT else 0.001)
        errs = refused({key: below})
        assert key in errs and 'out of range' in errs[key], (key, errs)
        errs = refused({key: above})
        assert key in errs, key
        # the edges themselves are allowed (unless a cross-key rule bites)
        for v in (lo, hi):
            cfg, e = C.check({key: v})
            assert cfg is not None or all(k != key or 'must be' in why for k, why in e), (key, v, e)


def test_reason_names_the_range():
    errs = refused({'MAX_CHARGE_AMPS': 100})
    assert errs['MAX_CHARGE_AMPS'] == 'value 100 out of range: allowed 6 to 80 A'
    errs = refused({'METER_BAUD': 1200})
    assert '2400, 4800, 9600, 19200, 38400' in errs['METER_BAUD']
    errs = refused({'GRID_PROFILE': 'UL1741'})
    assert 'EN50549_50HZ' in errs['GRID_PROFILE']


def test_types():
    errs = refused({'MAX_CHARGE_AMPS': '32', 'VENTILATION_AVAILABLE': 1, 'METER_ADDRESS': 2.5,
                    'PHASES': True, 'HEARTBEAT_TIMEOUT_S': None, 'METER_MODEL': 630})
    assert set(errs) == {'MAX_CHARGE_AMPS', 'VENTILATION_AVAILABLE', 'METER_ADDRESS', 'PHASES',
                         'HEARTBEAT_TIMEOUT_S', 'METER_MODEL'}
    assert 'wrong type' in errs['MAX_CHARGE_AMPS']
    assert 'true or false' in errs['VENTILATION_AVAILABLE']
    # an integral decimal is an integer
    assert C.validate({'METER_ADDRESS': 7.0}).get('METER_ADDRESS') == 7


def test_unknown_key_and_every_offender_named():
    errs = refused({'MAX_CHARGE_AMPS': 5, 'BOGUS': 1, 'PHASES': 2, 'HEARTBEAT_TIMEOUT_S': 10})
    assert set(errs) == {'MAX_CHARGE_AMPS', 'BOGUS', 'PHASES'}
    assert errs['BOGUS'] == 'unknown key'
    e = raises(C.ConfigError, C.validate, {'MAX_CHARGE_AMPS': 5, 'BOGUS': 1})
    assert e.code == 'V2G-400'
    assert sorted(e.keys()) == ['BOGUS', 'MAX_CHARGE_AMPS']
    assert 'V2G-400' in str(e) and 'MAX_CHARGE_AMPS' in str(e) and 'BOGUS' in str(e)


def test_not_a_map():
    errs = refused([1, 2])
    assert 'config' in errs


def test_version():
    assert C.validate({'version': 1}).get('version') == 1
    assert 'version' in refused({'version': 2})


def test_cross_key_rules():
    errs = refused({'EVSE_TEMP_DERATE_C': 80, 'EVSE_TEMP_LIMIT_C': 80})
    assert 'EVSE_TEMP_DERATE_C' in errs and 'EVSE_TEMP_LIMIT_C' in errs
    errs = refused({'BATTERY_TEMP_DERATE_C': 56})
    assert 'BATTERY_TEMP_DERATE_C' in errs and 'BATTERY_TEMP_LIMIT_C' in errs
    errs = refused({'MAX_CHARGE_AMPS': 16})    # discharge default 32 > 16
    assert 'MAX_DISCHARGE_AMPS' in errs
    assert C.validate({'MAX_CHARGE_AMPS': 16, 'MAX_DISCHARGE_AMPS': 16}).max_discharge_ma == 16000
    sep = {'discharge_rated_separately': True}
    assert C.validate({'MAX_CHARGE_AMPS': 16}, board=sep).max_discharge_ma == 32000


def test_change_over_current_keeps_the_rest():
    cur = C.validate({'MAX_CHARGE_AMPS': 40, 'MAX_DISCHARGE_AMPS': 20, 'VENTILATION_AVAILABLE': True})
    new = C.validate({'HEARTBEAT_TIMEOUT_S': 30}, cur)
    assert new.get('MAX_CHARGE_AMPS') == 40 and new.get('VENTILATION_AVAILABLE') is True
    assert new.heartbeat_timeout_ms == 30000
    assert new.diff(cur) == ['HEARTBEAT_TIMEOUT_S']
    # cross-key rule against the current values
    errs = refused({'MAX_CHARGE_AMPS': 10}, cur)
    assert 'MAX_DISCHARGE_AMPS' in errs


def test_whole_or_nothing():
    cur = C.validate({})
    before = cur.to_json()
    errs = refused({'HEARTBEAT_TIMEOUT_S': 20, 'METER_POLL_MS': 5}, cur)
    assert list(errs) == ['METER_POLL_MS']
    assert cur.to_json() == before
    assert cur.heartbeat_timeout_ms == 10000


def test_board_narrows():
    board = {'MAX_CHARGE_AMPS': [6, 16]}
    cfg = C.validate({}, board=board)
    assert cfg.max_charge_ma == 16000 and cfg.max_discharge_ma == 16000   # defaults pulled inside
    errs = refused({'MAX_CHARGE_AMPS': 32}, board=board)
    assert errs['MAX_CHARGE_AMPS'] == 'value 32 out of range: allowed 6 to 16 A'
    # the board travels with the config for later changes
    errs = refused({'MAX_CHARGE_AMPS': 20}, cfg)
    assert 'MAX_CHARGE_AMPS' in errs
    assert C.validate({'MAX_CHARGE_AMPS': 10, 'MAX_DISCHARGE_AMPS': 8}, cfg).max_charge_ma == 10000


def test_hash_is_canonical():
    a = C.validate({'MAX_CHARGE_AMPS': 20, 'MAX_DISCHARGE_AMPS': 10})
    b = C.validate({'MAX_DISCHARGE_AMPS': 10, 'MAX_CHARGE_AMPS': 20.0})
    assert a.config_hash() == b.config_hash()
    assert len(a.config_hash()) == 16
    assert a.config_hash() != C.validate({}).config_hash()
    # same text on every interpreter
    assert C.validate({}).config_hash() == '32080daa22fed671'


def test_dumps_and_load_json_roundtrip():
    a = C.validate({'FREQ_DEADBAND_HZ': 0.05, 'GRID_PROFILE': 'EN50549_50HZ', 'VENTILATION_AVAILABLE': True})
    text = a.dumps()
    assert json.loads(text)['FREQ_DEADBAND_HZ'] == 0.05
    b = C.load_json(text)
    assert b.to_json() == a.to_json() and b.config_hash() == a.config_hash()
    e = raises(C.ConfigError, C.load_json, '{"MAX_CHARGE_AMPS": ')
    assert e.keys() == ['config']


def test_grid_enter_service_keys_are_optional_numbers():
    cfg = C.validate({})
    assert cfg.grid_enter_service_ms is None and cfg.grid_ramp_ms is None
    short = C.validate({'GRID_ENTER_SERVICE_DELAY_S': 2, 'GRID_RAMP_S': 0.5})
    assert short.grid_enter_service_ms == 2000 and short.grid_ramp_ms == 500
    back = C.load_json(short.dumps())
    assert back.grid_enter_service_ms == 2000
    e = raises(C.ConfigError, C.validate, {'GRID_ENTER_SERVICE_DELAY_S': 601, 'GRID_RAMP_S': 'soon'})
    assert sorted(e.keys()) == ['GRID_ENTER_SERVICE_DELAY_S', 'GRID_RAMP_S']
    assert 'null or 0 to 600 s' in str(e)


INF = float('inf')
NAN = float('nan')


def test_non_text_keys_named_not_crashing():
    # mixed key types cannot be sorted: each non-text key is named, nothing raises
    errs = refused({1: 2, 'MAX_CHARGE_AMPS': 16})
    assert errs['1'] == 'key must be text'
    errs = refused({(1, 2): 2, 3.5: 1, 'MAX_CHARGE_AMPS': 99})
    assert errs['3.5'] == 'key must be text' and 'MAX_CHARGE_AMPS' in errs and len(errs) == 3
    e = raises(C.ConfigError, C.validate, {1: 2, 'MAX_CHARGE_AMPS': 16})
    assert e.keys() == ['1'] and 'key must be text' in str(e)


def test_non_finite_numbers_refused_for_every_kind():
    for key in ('MAX_CHARGE_AMPS', 'FREQ_DEADBAND_HZ', 'METER_ADDRESS', 'PHASES', 'METER_BAUD',
                'version', 'GRID_RAMP_S', 'GRID_ENTER_SERVICE_DELAY_S'):
        for v in (INF, -INF, NAN):
            errs = refused({key: v})
            assert list(errs) == [key], (key, v)
            assert 'not a finite number' in errs[key] or 'wrong type' in errs[key], (key, errs[key])


def test_huge_integers_refused_with_short_text():
    big = 10 ** 5000      # CPython refuses to print this; the message must not try
    for key in ('MAX_CHARGE_AMPS', 'METER_ADDRESS', 'PHASES', 'GRID_RAMP_S'):
        errs = refused({key: big})
        assert list(errs) == [key] and len(errs[key]) < 200, key
    errs = refused({big: 1})
    assert errs == {'a too large integer': 'key must be text'}


def test_load_json_raises_only_config_error():
    bad = ('{"MAX_CHARGE_AMPS": 1e999}', '{"MAX_CHARGE_AMPS": -1e999}', '{"METER_ADDRESS": 1e999}',
           '{"PHASES": 1e999}', '{"GRID_RAMP_S": 1e999}', '{"version": 1e999}',
           '{"MAX_CHARGE_AMPS": 100000000000000000000000000000000000000}',
           '{"MAX_CHARGE_AMPS": [16]}', '{"MAX_CHARGE_AMPS": {"a": 1}}', '{"GRID_PROFILE": ["x"]}',
           '{"PHASES": [1]}', '[1, 2]', '"text"', 'null', '12', '', '{',
           b'\xff\xfe', None, 12, '[' * 5000 + ']' * 5000)
    for text in bad:
        e = raises(C.ConfigError, C.load_json, text)
        assert e.code == 'V2G-400' and e.keys(), text
    e = raises(C.ConfigError, C.load_json, '{"MAX_CHARGE_AMPS": 1e999}')
    assert e.keys() == ['MAX_CHARGE_AMPS'] and 'inf' in str(e)
    assert C.load_json(b'{"MAX_CHARGE_AMPS": 40}').max_charge_ma == 40000


def test_notes_report_what_is_taken_but_weaker():
    """Valid settings that do less than they read are taken, and named in cfg.notes()."""
    # the defaults (METER_BAUD 38400): every stage met from the grid step, nothing to say
    assert C.validate({}).meter_baud == 38400
    assert C.validate({}).notes() == []
    notes = C.validate({'METER_BAUD': 9600}).notes()
    assert len(notes) == 1 and 'the 160 ms stages of IEEE1547_CAT_II_60HZ trip on the first reading' in notes[0]
    assert 'at most 150 ms after the grid step' in notes[0], notes
    en = C.validate({'GRID_PROFILE': 'EN50549_50HZ', 'NOMINAL_VOLTAGE_V': 230})
    notes = en.notes()
    assert len(notes) == 2 and 'the 100 ms stages of EN50549_50HZ trip on the first reading' in notes[0]
    assert 'at most 100 ms after the grid step' in notes[0], notes
    assert '0.2 Hz in force' in notes[1]
    # EN 50549 on a meter left at 9600 baud: its 0.1 s stages are late, and named so
    notes = C.validate({'GRID_PROFILE': 'EN50549_50HZ', 'NOMINAL_VOLTAGE_V': 230, 'METER_BAUD': 9600}).notes()
    assert 'the 100 ms stages of EN50549_50HZ can trip 150 ms after the grid step' in notes[0], notes
    # a slower line: the fast stages are late, and named so
    notes = C.validate({'METER_BAUD': 4800}).notes()
    assert 'the 160 ms stages of IEEE1547_CAT_II_60HZ can trip 350 ms after the grid step' in notes[0], notes
    # out of the profile's droop range: taken (clamped), not refused, and reported
    cfg = C.validate({'FREQ_DROOP_PCT': 10, 'METER_POLL_MS': 100})
    assert cfg.droop_mpct == 10000
    notes = cfg.notes()
    assert notes[-1] == 'FREQ_DROOP_PCT 10 is outside the 3-5 % of IEEE1547_CAT_II_60HZ: 5 % in force'
    assert any('METER_POLL_MS 100: a snapshot of current and energy takes 210 ms' in n for n in notes)
    fine = C.validate({'GRID_PROFILE': 'EN50549_50HZ', 'FREQ_DEADBAND_HZ': 0.2, 'METER_POLL_MS': 100})
    assert not any('FREQ_' in n for n in fine.notes())


# -- values on the key's step: what is taken is what is written and read back -----------------

def test_a_value_finer_than_its_step_is_refused_naming_the_key():
    cur = C.validate({'MIN_SOC_THRESHOLD': 40, 'MAX_DISCHARGE_AMPS': 10})
    for key, v in (('EVSE_TEMP_DERATE_C', 74.9999999), ('MAX_DISCHARGE_AMPS', 32.0000001),
                   ('MAX_DISCHARGE_AMPS', 1e-7), ('MIN_SOC_THRESHOLD', 40.05),
                   ('FREQ_DEADBAND_HZ', 0.0365)):
        errs = refused({key: v}, cur)
        assert list(errs) == [key], (key, v, errs)
        assert 'finer than the' in errs[key] and 'step' in errs[key], errs[key]
    assert refused({'EVSE_TEMP_DERATE_C': 74.99})['EVSE_TEMP_DERATE_C'].endswith(
        'finer than the 0.1 C step of this setting')
    # float noise of a decimal on the step is that step: in force and written as 0.3
    cfg = C.validate({'FREQ_RESPONSE_S': 0.1 + 0.2})
    assert cfg.get('FREQ_RESPONSE_S') == 0.3 and cfg.response_ms == 300
    assert '"FREQ_RESPONSE_S":0.3,' in cfg.dumps()


def _numeric_samples(key):
    kind, lo, hi, default, unit, _ = C.SCHEMA[key]
    scale = C.scale(key)
    lo_n, hi_n = C.steps(lo, scale)[0], C.steps(hi, scale)[0]
    span = hi_n - lo_n
    picks = [lo_n, hi_n, lo_n + 1, hi_n - 1]
    # a spread over the range plus the first and last steps (the host's property test in
    # tests/host/test_config_roundtrip.py covers many more, and single precision)
    for i in range(0, 37):
        picks.append(lo_n + span * i // 37 + i % 10)
    for i in range(2, 12):
        picks.append(lo_n + i)
        picks.append(hi_n - i)
    return [n for n in picks if lo_n <= n <= hi_n]


def test_every_accepted_value_is_written_as_json_that_reads_back_the_same():
    for key in sorted(k for k in C.KEYS if C.scale(k)):
        scale = C.scale(key)
        for n in _numeric_samples(key):
            text = C.dec_text(n, scale)
            v = json.loads(text)      # the value as a host sends it
            # pair keys: keep the cross-key rules out of the way
            changes = {key: v}
            if key == 'EVSE_TEMP_DERATE_C':
                changes['EVSE_TEMP_LIMIT_C'] = 100
            elif key == 'EVSE_TEMP_LIMIT_C':
                changes['EVSE_TEMP_DERATE_C'] = 30
            elif key == 'BATTERY_TEMP_DERATE_C':
                changes['BATTERY_TEMP_LIMIT_C'] = 70
            elif key == 'BATTERY_TEMP_LIMIT_C':
                changes['BATTERY_TEMP_DERATE_C'] = 20
            elif key == 'MAX_DISCHARGE_AMPS':
                changes['MAX_CHARGE_AMPS'] = 80
            elif key == 'MAX_CHARGE_AMPS':
                changes['MAX_DISCHARGE_AMPS'] = 0
            cfg, errs = C.check(changes)
            if cfg is None and key in ('EVSE_TEMP_DERATE_C', 'BATTERY_TEMP_DERATE_C'):
                continue   # at the top of the derate range no limit is above it
            assert cfg is not None, (key, text, errs)
            written = cfg.dumps()
            assert '"{}":{}'.format(key, text) in written, (key, text, written)
            back = C.load_json(written)
            assert back.get(key) == cfg.get(key) and back.dumps() == written, (key, text)
            assert back.config_hash() == cfg.config_hash()
            assert C.steps(cfg.get(key), scale) == (n, True), (key, text)


def test_issue_values_round_trip_or_are_refused():
    cur = C.validate({'MIN_SOC_THRESHOLD': 40, 'MAX_DISCHARGE_AMPS': 10})
    for key, v in (('EVSE_TEMP_DERATE_C', 74.9999999), ('MAX_DISCHARGE_AMPS', 32.0000001),
                   ('MAX_DISCHARGE_AMPS', 1e-7)):
        cfg, errs = C.check({key: v}, cur)
        if cfg is not None:     # whatever is taken must read back as itself
            assert C.load_json(cfg.dumps()).dumps() == cfg.dumps()
    assert C.load_json(cur.dumps()).config_hash() == cur.config_hash()


def test_canonical_text_is_json_for_any_number():
    for v in (74.9999999, 32.0000001, 1e-7, 0.1 + 0.2, 1e20, 12.5):
        for key in ('EVSE_TEMP_DERATE_C', 'MAX_DISCHARGE_AMPS', 'METER_POLL_MS', 'NOT_A_SETTING'):
            text = C.canonical({key: v})
            assert key in json.loads(text), text


# -- refusals name the key safely and briefly --------------------------------------------------

def test_a_huge_decimal_is_refused_with_short_text():
    errs = refused({'MAX_DISCHARGE_AMPS': 1e308})
    assert len(errs['MAX_DISCHARGE_AMPS']) < 80, errs
    assert 'out of range' in errs['MAX_DISCHARGE_AMPS']


def test_a_control_character_in_a_key_is_shown_escaped():
    e = raises(C.ConfigError, C.validate, {'MAX_\x00CHARGE\x1b[2J': 1})
    text = str(e)
    assert '\x00' not in text and '\x1b' not in text, text
    assert '\\x00' in text and 'unknown key' in text, text
    assert e.keys() == ['MAX_\x00CHARGE\x1b[2J']
    assert 'MAX_CHARGE_AMPS: value 100' in str(raises(C.ConfigError, C.validate, {'MAX_CHARGE_AMPS': 100}))


def test_a_key_given_twice_is_refused_naming_it():
    for text in ('{"MIN_SOC_THRESHOLD": 40,\n "MIN_SOC_THRESHOLD": 10}',
                 '{"MIN_SOC_THRESHOLD": 40, "PHASES": 1,\n\n "MIN_SOC_THRESHOLD": 40}',
                 '{"MIN_SOC_THRESHOLD": 40, "\\u004dIN_SOC_THRESHOLD": 10}'):
        e = raises(C.ConfigError, C.load_json, text)
        assert e.keys() == ['MIN_SOC_THRESHOLD'], (text, e.errors)
        assert 'given more than once' in str(e)
    e = raises(C.ConfigError, C.load_json, '{"A": 1, "MIN_SOC_THRESHOLD": 40,\n"A": 2,\n"MIN_SOC_THRESHOLD": 4}')
    assert e.keys() == ['A', 'MIN_SOC_THRESHOLD'] and 'again at line 3' in str(e), str(e)
    # the same text inside a value or a nested object is no duplicate key
    assert C.load_json('{"GRID_PROFILE": "EN50549_50HZ", "METER_MODEL": "SDM630"}').get('PHASES') == 1
    e = raises(C.ConfigError, C.load_json, '{"X": {"a": 1, "a": 2}, "Y": "\\"Y\\": 1"}')
    assert sorted(e.keys()) == ['X', 'Y'] and 'more than once' not in str(e)


def test_members_of_broken_text_never_raise():
    got = C.members('{"a": {"b": [1, "}"]}, "c" : 75. , "d": "x,}" , "e": 1')
    assert got == [('a', '{"b": [1, "}"]}', 5), ('c', '75.', 28), ('d', '"x,}"', 39)], got
    for text in ('', '{', '{"', '{"a', '{"a":', '[1, {"a": 2}]', '"{"', '{"a\\', '}}}{', '{"a":[[[[' * 50):
        C.members(text)


# -- a settings file refused at boot never loosens a safety limit ------------------------------

CFG_WORK = scratch('config')


def _boot_with(text):
    from app import station
    with open('v2g_vars.json', 'wb') as f:
        f.write(text if isinstance(text, bytes) else text.encode())
    cfg, problem, keys = station.load_config(None)
    assert keys == set()
    assert open('v2g_vars.json', 'rb').read() == (text if isinstance(text, bytes) else text.encode())
    return cfg, problem


@in_dir(CFG_WORK)
def test_a_refused_file_keeps_its_stricter_safety_limits():
    wipe(CFG_WORK)
    cfg, problem = _boot_with(json.dumps({'MIN_SOC_THRESHOLD': 40, 'MAX_DISCHARGE_AMPS': 10,
                                          'MAX_CHARGE_AMPS': 16, 'EVSE_TEMP_LIMIT_C': 70,
                                          'BATTERY_TEMP_DERATE_C': 40, 'THERMAL_HYSTERESIS_C': 8,
                                          'RESERVE_MARGIN': 10, 'NOMINAL_VOLTAGE_V': 999}))
    assert 'NOMINAL_VOLTAGE_V' in problem and 'V2G-400' in problem
    assert cfg.min_soc_pm == 400 and cfg.floor_pm == 400
    assert cfg.max_discharge_ma == 10000 and cfg.max_charge_ma == 16000
    assert cfg.evse_limit_dc == 700 and cfg.batt_derate_dc == 400 and cfg.hysteresis_dc == 80
    assert cfg.reserve_pm == 200                       # the default is the stricter
    assert cfg.nominal_mv == 240000                    # not a safety limit: the default
    assert 'MIN_SOC_THRESHOLD 40' in problem and 'MAX_DISCHARGE_AMPS 10' in problem
    assert 'discharge off' not in problem


@in_dir(CFG_WORK)
def test_a_refused_file_never_raises_a_limit_above_the_default():
    wipe(CFG_WORK)
    cfg, problem = _boot_with(json.dumps({'MIN_SOC_THRESHOLD': 5, 'MAX_DISCHARGE_AMPS': 40,
                                          'MAX_CHARGE_AMPS': 80, 'EVSE_TEMP_LIMIT_C': 99,
                                          'PHASES': 2}))
    default = C.validate({})
    assert cfg.config_hash() == default.config_hash(), cfg.dumps()
    assert 'stricter' not in problem
    # out-of-range or non-numeric values do not count; the stricter step does
    cfg, problem = _boot_with(json.dumps({'MIN_SOC_THRESHOLD': 40.01, 'MAX_DISCHARGE_AMPS': 10.0004,
                                          'MAX_CHARGE_AMPS': 5, 'EVSE_TEMP_LIMIT_C': '50',
                                          'RESERVE_MARGIN': True}))
    assert cfg.min_soc_pm == 401 and cfg.max_discharge_ma == 10000
    assert cfg.max_charge_ma == 32000 and cfg.evse_limit_dc == 750 and cfg.reserve_pm == 200


@in_dir(CFG_WORK)
def test_a_refused_file_keeps_its_limit_pairs_consistent():
    wipe(CFG_WORK)
    cfg, problem = _boot_with(json.dumps({'EVSE_TEMP_DERATE_C': 40, 'EVSE_TEMP_LIMIT_C': 35,
                                          'MAX_CHARGE_AMPS': 10, 'MAX_DISCHARGE_AMPS': 20}))
    assert cfg.evse_limit_dc == 350 and cfg.evse_derate_dc == 300   # derating from the lowest point
    assert cfg.max_charge_ma == 10000 and cfg.max_discharge_ma == 10000


@in_dir(CFG_WORK)
def test_a_file_given_a_key_twice_keeps_the_stricter_of_both():
    wipe(CFG_WORK)
    cfg, problem = _boot_with('{"MIN_SOC_THRESHOLD": 40, "MAX_DISCHARGE_AMPS": 10,\n'
                              ' "MIN_SOC_THRESHOLD": 10}')
    assert 'MIN_SOC_THRESHOLD: given more than once' in problem
    assert cfg.min_soc_pm == 400 and cfg.max_discharge_ma == 10000


@in_dir(CFG_WORK)
def test_a_file_that_is_not_json_turns_discharge_off_and_keeps_what_it_can():
    wipe(CFG_WORK)
    # what the old canonical form wrote for 74.9999999: "75." is not JSON
    # (CPython's json refuses it; MicroPython's reads it as 75, which its limit of 75 refuses)
    cfg, problem = _boot_with('{"EVSE_TEMP_DERATE_C":75.,"MAX_DISCHARGE_AMPS":10,"MIN_SOC_THRESHOLD":40}')
    assert problem and cfg.min_soc_pm == 400 and cfg.evse_derate_dc == 650
    assert cfg.max_discharge_ma == (0 if 'discharge off' in problem else 10000), problem
    cfg, problem = _boot_with('{"MAX_DISCHARGE_AMPS":10,"MIN_SOC_THRESHOLD":40,"EVSE_TEMP_DERATE_C":7x}')
    assert cfg.max_discharge_ma == 0 and cfg.min_soc_pm == 400 and cfg.evse_derate_dc == 650
    assert 'discharge off' in problem and 'not valid JSON' in problem
    for text in ('', 'garbage', b'\xff\xfe{', '[1, 2]', '{"MIN_SOC_THRESHOLD": 4', '[' * 5000):
        cfg, problem = _boot_with(text)
        assert cfg.max_discharge_ma == 0 and cfg.floor_pm == 200, text
        assert 'discharge off' in problem, text


def test_every_decimal_setting_has_its_step_in_its_row():
    # the scale lives in SCHEMA's rows (no dict of its own in RAM): a power of ten for the
    # decimal kinds, none for the others
    for key in C.KEYS:
        kind, sc = C.SCHEMA[key][0], C.SCHEMA[key][5]
        if kind in (C.NUM, C.OPTNUM):
            assert sc in (10, 100, 1000) and C.scale(key) == sc, key
        else:
            assert sc == 0 and C.scale(key) is None and C.scale(key, 1) == 1, key
    assert C.scale('NO_SUCH_KEY') is None and C.scale('FREQ_DEADBAND_HZ') == 1000
