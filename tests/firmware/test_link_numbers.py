"""No float crosses the host link: settings and measurements go as integers (milli-units) or
exact decimal fractions (CBOR tag 4), so a single-precision board neither sends
0.035999998450279236 for 0.036 nor reads a double beyond its range as inf."""
import struct

from fwtest import in_dir
from test_station_heap import WORK, SteadyHost

from core import cbor, decfrac
from core import link as L
from core.cbor import Tag


def _single(x):
    """x as a single-precision board holds it."""
    return struct.unpack('<f', struct.pack('<f', x))[0]


def _floats(v, path='', out=None):
    out = [] if out is None else out
    if isinstance(v, float):
        out.append(path)
    elif isinstance(v, dict):
        for k in v:
            _floats(v[k], path + '.' + str(k), out)
    elif isinstance(v, list):
        for i, x in enumerate(v):
            _floats(x, path + '[{}]'.format(i), out)
    elif isinstance(v, Tag):
        _floats(v.value, path + '<tag>', out)
    return out


def _answer(rig, txn):
    for m in rig.sent:
        if m['t'] == 'res' and m['txn'] == txn:
            return m
    raise AssertionError('no answer to ' + txn)


class Host(SteadyHost):
    def __init__(self):
        SteadyHost.__init__(self)
        self.sent = []

    def host_turn(self):
        data = self.ports.sent()
        # every frame as the bytes came: a float anywhere would decode as a float
        self.sent.extend(self.host.feed(data))
        if self.now % 1000 == 0:
            self.seq += 1
            self.ports.send(L.encode_frame(L.hb(self.seq, self.now)))

    def command(self, txn, op, args):
        self.ports.send(L.encode_frame(L.cmd(txn, op, args)))
        self.run(4, self.plain_tick)
        return _answer(self, txn)


@in_dir(WORK)
def test_no_float_in_any_frame_the_station_sends_and_decimals_arrive_exact():
    rig = Host()
    rig.run(200, rig.plain_tick)
    # the host sets decimals as decimal fractions: taken exactly
    r = rig.command('n-1', 'config_set', {'FREQ_DEADBAND_HZ': Tag(4, [-3, 36]), 'MAX_CHARGE_AMPS': Tag(4, [-1, 165]),
                                          'MAX_DISCHARGE_AMPS': 16, 'RESERVE_MARGIN': 25})
    assert r['ok'], r
    assert rig.st.cfg.deadband_mhz == 36 and rig.st.cfg.max_charge_ma == 16500
    assert '"FREQ_DEADBAND_HZ":0.036' in rig.st.cfg.dumps()
    # one finer than the setting's step is refused naming the key, and changes nothing
    r = rig.command('n-2', 'config_set', {'FREQ_DEADBAND_HZ': Tag(4, [-4, 365])})
    assert not r['ok'] and 'FREQ_DEADBAND_HZ' in r['msg'] and '0.0365' in r['msg'] and 'step' in r['msg']
    assert rig.st.cfg.deadband_mhz == 36
    # as a single-precision board holds the setting, config_get still answers the exact decimal
    rig.st.cfg.values['FREQ_DEADBAND_HZ'] = _single(0.036)
    vals = rig.command('n-3', 'config_get', {})['data']['values']
    assert vals['FREQ_DEADBAND_HZ'] == Tag(4, [-3, 36]) and vals['MAX_CHARGE_AMPS'] == Tag(4, [-1, 165])
    assert vals['RESERVE_MARGIN'] == 25 and vals['NOMINAL_VOLTAGE_V'] == 240
    r = rig.command('n-4', 'soc_target', {'soc_pct': Tag(4, [-1, 625])})
    assert r['ok'] and r['data']['target_pm'] == 625, r
    r = rig.command('n-5', 'limit', {'charge_a': Tag(4, [-1, 125]), 'discharge_a': None})
    assert r['ok'] and r['data'] == {'charge_ma': 12500, 'discharge_ma': None}, r
    for txn, op in (('n-6', 'status'), ('n-7', 'diag'), ('n-8', 'events'), ('n-9', 'fota_status')):
        rig.command(txn, op, {})
    rig.run(100, rig.plain_tick)
    kinds = set(m['t'] for m in rig.sent)
    assert {'hback', 'tel', 'res'} <= kinds, kinds
    floats = []
    for m in rig.sent:
        floats += [m['t'] + p for p in _floats(m)]
    assert not floats, floats


def test_decimal_fractions_read_exactly_into_steps():
    assert decfrac.steps(Tag(4, [-3, 36]), 1000) == (36, True)
    assert decfrac.steps(Tag(4, [-4, 365]), 1000) == (37, False)     # rounded, not exact
    assert decfrac.steps(Tag(4, [2, -3]), 1) == (-300, True)
    assert decfrac.steps(Tag(4, [-1, 5]), 1) == (1, False)
    for bad in (Tag(4, [1]), Tag(4, [-1, 1.5]), Tag(4, [99, 1]), Tag(4, [True, 1]), Tag(2, [0, 1]), 0.5):
        assert decfrac.steps(bad, 1000) is None, bad
    assert decfrac.of_steps(36, 1000) == Tag(4, [-3, 36]) and decfrac.of_steps(500, 1000) == Tag(4, [-1, 5])
    assert decfrac.of_steps(32000, 1000) == 32 and decfrac.of_steps(-15, 10) == Tag(4, [-1, -15])
    assert [decfrac.text(Tag(4, x)) for x in ([-3, 36], [-1, -15], [2, 7], [-2, 1234])] == \
        ['0.036', '-1.5', '700', '12.34']
    # the bytes are RFC 8949's decimal fraction, as cbor2 writes Decimal('0.036')
    assert cbor.dumps(Tag(4, [-3, 36])) == bytes.fromhex('c482221824')
