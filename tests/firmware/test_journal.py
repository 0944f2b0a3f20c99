from fwtest import raises

from core.eventlog import EventLog
from core.journal import Journal


def test_put_get_and_repeat_keeps_first():
    j = Journal(4)
    j.put('a', (True, None, 'ok', {'x': 1}))
    j.put('a', (False, 'V2G-400', 'later', {}))
    assert j.get('a') == (True, None, 'ok', {'x': 1})
    assert 'a' in j and 'b' not in j
    assert j.get('b') is None


def test_bounded_oldest_dropped():
    j = Journal(3)
    for i in range(5):
        j.put('t{}'.format(i), (True, None, str(i), {}))
    assert len(j) == 3
    assert j.get('t0') is None and j.get('t1') is None
    assert j.get('t4')[2] == '4'


def test_dump_load_roundtrip_and_dirty():
    j = Journal(8)
    assert not j.dirty
    j.put('x1', (False, 'V2G-301', 'refused', {'a': 2}))
    assert not j.dirty                       # a refusal changed nothing: nothing to write
    assert j.get('x1') == (False, 'V2G-301', 'refused', {'a': 2})   # same answer in this boot
    j.put('x2', (True, None, 'done', {}))
    assert j.dirty
    blob = j.dump()
    assert not j.dirty
    assert b'x1' not in blob
    k = Journal(8)
    k.load(blob)
    assert k.get('x1') is None
    assert k.get('x2') == (True, None, 'done', {})
    assert len(k) == 1 and not k.dirty


def test_refusals_never_push_applied_results_out():
    j = Journal(4)
    j.put('ok-1', (True, None, 'applied', {}))
    for i in range(100):
        j.put('bad-{}'.format(i), (False, 'V2G-400', 'x: unknown argument', {}))
    assert j.get('ok-1') == (True, None, 'applied', {})
    assert j.get('bad-99') is not None and j.get('bad-0') is None   # refusals: a small ring


def test_an_entry_and_the_file_have_bounded_sizes():
    import json
    from core import journal as J
    j = Journal(32)
    huge_msg = 'a: unknown setting; ' * 300
    huge_data = {'errors': dict(('k{}'.format(i), 'unknown setting') for i in range(250))}
    j.put('big-bad', (False, 'V2G-400', huge_msg, huge_data))
    ok, code, msg, data = j.get('big-bad')
    assert not ok and code == 'V2G-400' and len(msg) <= J.MSG_MAX and msg.startswith('a: unknown')
    assert len(json.dumps(['big-bad', ok, code, msg, data])) <= J.ENTRY_BYTES
    for i in range(40):
        j.put('big-{}'.format(i), (True, None, huge_msg, huge_data))
    blob = j.dump()
    assert len(blob) <= J.BUDGET + 64
    assert j.get('big-39') is not None and len(j) >= J.BUDGET // J.ENTRY_BYTES
    k = Journal(32)
    k.load(blob)
    assert k.get('big-39') == j.get('big-39')


def test_load_bad_keeps_contents():
    j = Journal(8)
    j.put('keep', (True, None, 'ok', {}))
    raises(ValueError, j.load, b'{"v": 2, "txns": []}')
    raises(ValueError, j.load, b'{"v": 1, "txns": [[1, 2]]}')
    raises(ValueError, j.load, b'not json')
    assert j.get('keep') == (True, None, 'ok', {})


def test_load_larger_than_size_keeps_newest():
    j = Journal(8)
    for i in range(8):
        j.put(str(i), (True, None, '', {}))
    k = Journal(3)
    k.load(j.dump())
    assert len(k) == 3 and k.get('7') is not None and k.get('4') is None


def test_eventlog_ring():
    log = EventLog(4)
    for i in range(6):
        log.append(i * 10, 'V2G-009', i % 2 == 0, 'm{}'.format(i))
    e = log.entries()
    assert len(e) == 4
    assert e[0] == (20, 'V2G-009', True, 'm2')
    assert e[-1] == (50, 'V2G-009', False, 'm5')
    assert log.total == 6 and log.dirty


def test_eventlog_dump_load():
    log = EventLog(4)
    log.append(5, 'V2G-101', True, 'lost')
    log.append(9, 'V2G-101', False, 'back')
    blob = log.dump()
    assert not log.dirty
    other = EventLog(4)
    other.load(blob)
    assert other.entries() == log.entries()
    assert other.total == 2 and not other.dirty
    raises(ValueError, other.load, b'{"v": 1, "events": [[1]]}')
    assert other.entries() == log.entries()


def test_eventlog_amend_changes_only_the_matching_newest_entry():
    from core.eventlog import EventLog
    log = EventLog(size=4)
    log.append(10, 'V2G-120', True, 'meter stale')
    log.append(20, 'V2G-120', True, 'meter stale')
    log.dump()   # clears dirty
    assert log.amend(20, 'V2G-120', 'meter stale', 'meter stale [timeout]')
    assert log.dirty
    assert [e[3] for e in log.entries()] == ['meter stale', 'meter stale [timeout]']
    assert not log.amend(30, 'V2G-120', 'meter stale', 'x')
    for t in range(5):
        log.append(100 + t, 'V2G-009', True, 'hot')   # wraps the ring
    assert not log.amend(10, 'V2G-120', 'meter stale', 'x')


def test_eventlog_message_and_file_are_bounded():
    import json
    from core import eventlog as EL
    log = EventLog()
    long_text = 'refused config_set: ' + 'x: unknown setting, ' * 200
    for i in range(200):
        log.append(i, 'V2G-400', True, long_text)
    rows = log.rows()
    assert rows[-1][3].startswith('refused config_set: x') and len(rows[-1][3]) <= EL.TEXT_MAX
    assert sum(len(r[3]) for r in rows) <= EL.BUDGET
    blob = log.dump()
    assert len(blob) <= EL.MAX_FILE
    assert log.total == 200
    other = EventLog()
    other.load(blob)
    assert other.entries() == log.entries()
    # texts whose JSON is longer than their characters (escaped quotes) still fit the file
    quoted = '"' * EL.TEXT_MAX
    for i in range(200):
        log.append(i, 'V2G-400', True, quoted)
    blob = log.dump()
    assert len(blob) <= EL.MAX_FILE and json.loads(blob)['events'][-1][3] == quoted
    assert len(json.loads(blob)['events']) == len(log)
    # short entries still fill the whole ring
    for i in range(200):
        log.append(i, None, True, 'pilot state C')
    assert len(log) == EL.SIZE
