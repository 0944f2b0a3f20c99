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
    j.put('x2', (True, None, 'done', {}))
    assert j.dirty
    blob = j.dump()
    assert not j.dirty
    k = Journal(8)
    k.load(blob)
    assert k.get('x1') == (False, 'V2G-301', 'refused', {'a': 2})
    assert k.get('x2') == (True, None, 'done', {})
    assert len(k) == 2 and not k.dirty


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
