"""The signed update's key load and head check run in bounded slices between control steps.

A whole key load (about 0.5-0.9 s on the board) or ES256 verify (0.13-0.16 s) in one go
would hold the station's control step, and the grid protection's trips with it, for longer
than a clearing time. These tests count the work (point operations, as the slices report
them) that runs between two control steps, and check that the steps go on while an
update's head is checked.
"""
import hashlib

from test_cose import BUNDLE_OK, KEY_A, KEY_B, _b
from test_p256 import VECTORS, _h
from test_update import bid, make, scratch

from core import p256
from app import update

try:
    import gc
    _mem = gc.mem_alloc
except (ImportError, AttributeError):   # CPython: no heap figures
    _mem = None


def _slices(steps):
    return [k for k in steps]


def _hb(s):
    return s if isinstance(s, bytes) else _h(s)


def test_key_load_runs_in_slices_of_at_most_slice_ops():
    pt = _h(VECTORS[0][0])
    out = []
    ks = _slices(p256.load_steps(pt, out))
    assert max(ks) <= p256.SLICE_OPS
    # the key's two tables: 241 doublings, 32 + 32 + 2 x (128 + 128) affine points,
    # 2 x (7 + 127) additions, 3 x 8 inverse windows; G's second table: 241 doublings,
    # 32 + 32 + 128 + 128 affine points, 7 + 127 additions, 2 x 8 windows
    assert sum(ks) == (241 + 576 + 268 + 24) + (241 + 320 + 134 + 16)
    assert ks.count(0) >= 3     # each table's allocation in a slice of its own
    assert len(ks) >= (241 + 576 + 268 + 241 + 320 + 134) // p256.SLICE_OPS
    key = out[0]
    assert [bytes(t) for t in key._tab] == [bytes(t) for t in p256.PublicKey(pt)._tab]
    # one table per base: 225 doublings, 16 + 16 + 128 + 128 points, 134 additions, 2 x 8
    ks = _slices(p256.load_steps(pt, out, 1))
    assert max(ks) <= p256.SLICE_OPS
    assert sum(ks) == 225 + 288 + 134 + 16


def test_verify_runs_in_slices_of_at_most_slice_ops():
    pt, msg, sig = VECTORS[0]
    key = p256.PublicKey(_h(pt))
    digest = hashlib.sha256(_hb(msg)).digest()
    for s, want in ((_h(sig), True), (_h(sig)[:63] + bytes([_h(sig)[63] ^ 1]), False)):
        out = []
        ks = _slices(key.verify_steps(digest, s, out))
        assert out == [want]
        assert max(ks) <= p256.SLICE_OPS
        assert sum(ks) >= 15 + 63 + 8   # doublings, additions, inverse windows
        assert len(ks) >= (15 + 63) // p256.SLICE_OPS
        out = []
        ks = _slices(p256.PublicKey(_h(pt), halves=1).verify_steps(digest, s, out))
        assert out == [want] and max(ks) <= p256.SLICE_OPS
        assert sum(ks) >= 31 + 63 + 8


def test_a_bad_key_point_is_refused_before_any_slice_of_work():
    pt = bytearray(_h(VECTORS[0][0]))
    pt[40] ^= 1
    steps = p256.load_steps(bytes(pt), [])
    try:
        next(steps)
    except ValueError as e:
        assert 'not on P-256' in str(e)
    else:
        raise AssertionError('a point off the curve was taken')


class _Out:
    contactor = False


class _Ctl:
    def __init__(self):
        self.out = _Out()


def _station_steps(u, data, size=150):
    """Play the station: every step (50 ms of simulated time) the control step (counted),
    the updater's tick and at most one host chunk, resent as the answers ask. Returns
    (steps while the head was in and its body not yet taken, the heap the largest step's
    update work allocated, or None on CPython)."""
    n = 8 + int.from_bytes(data[4:8], 'big')
    waiting = 0
    worst_heap = None
    off = 0
    now = 0
    r = u.command('fota_begin', {'size': len(data), 'id': bid(data)}, now)
    assert r[0], r
    while off < len(data):
        now += 50
        if _mem is not None:
            gc.collect()
            before = _mem()
        u.tick(now, 0)
        r = u.command('fota_chunk', {'off': off, 'data': data[off:off + size]}, now)
        if _mem is not None:
            used = _mem() - before
            worst_heap = used if worst_heap is None or used > worst_heap else worst_heap
        assert r[0], r
        if off >= n and r[3]['next'] == n:
            waiting += 1      # a step that ran while the head's signature was checked
        off = r[3]['next']
    assert u.command('fota_finish', {'reboot': False}, now)[0]
    return waiting, worst_heap


def test_control_steps_keep_running_while_an_update_head_is_checked():
    root = scratch(KEY_A)
    data = _b(BUNDLE_OK)
    u = make(root, ctl=_Ctl())
    waiting, heap = _station_steps(u, data)
    # the verify alone is 25 slices of at most 6 point operations, one per step
    assert waiting >= 12, waiting
    if heap is not None:
        # a step's update work stays within one slice: 6 point operations leave about
        # 13 kB, where one verify leaves 193 kB and a key load about 900 kB
        assert heap <= 20000, heap
    assert u.report()['pending'] == 'a'


def test_the_chunk_completing_the_head_returns_before_the_signature_is_checked():
    root = scratch(KEY_A)
    data = _b(BUNDLE_OK)
    u = make(root)
    u.command('fota_begin', {'size': len(data), 'id': bid(data)}, 0)
    n = 8 + int.from_bytes(data[4:8], 'big')
    r = u.command('fota_chunk', {'off': 0, 'data': data[:n + 50]}, 0)
    assert r[0] and r[3]['next'] == n      # the head held; the body bytes are sent again
    assert u.dl.man is None
    r = u.command('fota_chunk', {'off': n, 'data': data[n:n + 50]}, 0)
    # held, not refused (no event per chunk in flight): the host resends from next
    assert r[0] and r[3]['next'] == n and r[2].startswith('verifying'), r
    ticks = 0
    while u.dl.job is not None:
        u.tick(0, 0)
        ticks += 1
    assert ticks > 40
    assert update.storage.exists(root + 'slots/a.head')


def test_a_bad_signature_found_between_steps_is_refused_on_the_next_chunk():
    root = scratch(KEY_A)
    data = bytearray(_b(BUNDLE_OK))
    n = 8 + int.from_bytes(data[4:8], 'big')
    data[n - 1] ^= 1                      # last byte of the signature
    data = bytes(data)
    u = make(root)
    u.command('fota_begin', {'size': len(data), 'id': bid(data)}, 0)
    assert u.command('fota_chunk', {'off': 0, 'data': data[:n]}, 0)[0]
    while u.dl is not None:
        u.tick(0, 0)
    r = u.command('fota_chunk', {'off': n, 'data': data[n:n + 50]}, 0)
    assert not r[0] and r[1] == 'V2G-601' and r[2].startswith('signature'), r
    assert u.report()['pending'] is None and u.st['dl'] is None
    assert any(it[1] == 'V2G-601' for it in u.log.items)


def test_chunks_in_flight_past_a_checked_head_are_held_not_refused():
    # a refusal is an event (and a flash write) per chunk: the host's chunks sent on while
    # the head was checked are answered with `next` until it sends from there again
    root = scratch(KEY_A)
    data = _b(BUNDLE_OK)
    log = []
    u = make(root)
    u.log.items = log
    u.command('fota_begin', {'size': len(data), 'id': bid(data)}, 0)
    n = 8 + int.from_bytes(data[4:8], 'big')
    assert u.command('fota_chunk', {'off': 0, 'data': data[:n]}, 0)[3]['next'] == n
    r = u.command('fota_chunk', {'off': n + 100, 'data': data[n + 100:n + 200]}, 0)
    assert r[0] and r[3]['next'] == n and r[2].startswith('verifying'), r
    while u.dl.job is not None:
        u.tick(0, 0)
    r = u.command('fota_chunk', {'off': n + 200, 'data': data[n + 200:n + 300]}, 0)
    assert r[0] and r[3]['next'] == n and 'resend from offset {}'.format(n) in r[2], r
    r = u.command('fota_chunk', {'off': n, 'data': data[n:n + 100]}, 0)
    assert r[0] and r[3]['next'] == n + 100, r
    r = u.command('fota_chunk', {'off': n + 300, 'data': data[n + 300:n + 400]}, 0)
    assert not r[0] and r[1] == 'V2G-400' and 'gap' in r[2], r     # a gap again, as ever
    assert log == []


def _head_job_steps(root, data):
    """Control steps the download's job takes from fota_begin to the head's verdict, the
    whole head sent at once; the update then runs to its end. Returns (steps, pending)."""
    u = make(root)
    u.command('fota_begin', {'size': len(data), 'id': bid(data)}, 0)
    n = 8 + int.from_bytes(data[4:8], 'big')
    assert u.command('fota_chunk', {'off': 0, 'data': data[:n]}, 0)[0]
    steps = 0
    while u.dl is not None and u.dl.job is not None:
        u.tick(0, 0)
        steps += 1
    off = n
    while u.dl is not None and off < len(data):
        r = u.command('fota_chunk', {'off': off, 'data': data[off:off + 400]}, 0)
        assert r[0], r
        off = r[3]['next']
    if u.dl is not None:
        assert u.command('fota_finish', {'reboot': False}, 0)[0]
    return steps, u.report()['pending']


def _read(path):
    with open(path, 'rb') as f:
        return f.read()


def test_the_key_tables_are_kept_between_updates_and_a_damaged_copy_is_rebuilt():
    from app import install
    data = _b(BUNDLE_OK)
    root = scratch(KEY_A)
    cache = root + install.KEY_TABLE_FILE
    built, pending = _head_job_steps(root, data)
    assert pending == 'a'
    assert built > 300, built          # the tables: about 360 slices
    good = _read(cache)
    assert len(good) == p256.CACHE_LEN

    # the next update (a fresh controller with that file) reads them in one step
    root2 = scratch(KEY_A)
    with open(root2 + install.KEY_TABLE_FILE, 'wb') as f:
        f.write(good)
    kept, pending = _head_job_steps(root2, data)
    assert pending == 'a'
    assert kept < 40 and built - kept > 300, (built, kept)   # the verify: about 26

    # one byte changed anywhere, a short file, or another key's tables: rebuilt, rewritten
    other = p256.PublicKey(_b(KEY_B))
    foreign = p256.cache_head(other.point, other._tab) + b"".join(other._tab)
    for bad in (good[:100] + bytes([good[100] ^ 1]) + good[101:],
                good[:-1] + bytes([good[-1] ^ 0x80]),
                good[:len(good) // 2],
                foreign):
        root3 = scratch(KEY_A)
        with open(root3 + install.KEY_TABLE_FILE, 'wb') as f:
            f.write(bad)
        steps, pending = _head_job_steps(root3, data)
        assert pending == 'a'
        assert steps > 300, steps
        assert _read(root3 + install.KEY_TABLE_FILE) == good


def test_from_the_kept_file_only_the_keys_first_table_is_held_in_ram():
    # the key's second table and G's second stay in update_key.tab: a verify reads their
    # entries from there (16 KiB less while an update runs) and passes the same head
    from app import install
    data = _b(BUNDLE_OK)
    root = scratch(KEY_A)
    _head_job_steps(root, data)
    good = _read(root + install.KEY_TABLE_FILE)
    root2 = scratch(KEY_A)
    with open(root2 + install.KEY_TABLE_FILE, 'wb') as f:
        f.write(good)
    u = make(root2)
    u.command('fota_begin', {'size': len(data), 'id': bid(data)}, 0)
    n = 8 + int.from_bytes(data[4:8], 'big')
    assert u.command('fota_chunk', {'off': 0, 'data': data[:n]}, 0)[0]
    while u.dl is not None and u.dl.job is not None:
        u.tick(0, 0)
    assert u.dl is not None and u.dl.man is not None      # the head verified
    tabs = u.key._tab
    assert bytes(tabs[0]) == good[p256.CACHE_HEAD_LEN:p256.CACHE_HEAD_LEN + p256.TABLE_LEN]
    assert [type(t) for t in tabs[1:]] == [p256.FileTable, p256.FileTable]
    assert [t.offset for t in tabs[1:]] == [p256.cache_table_offset(1), p256.cache_table_offset(2)]


def test_without_room_for_the_kept_tables_the_key_gets_one_table_per_base():
    from app import install
    data = _b(BUNDLE_OK)
    saved = update.fs_space
    try:
        # room for the bundle and the margin, not for the tables' 24 KiB beside it
        update.fs_space = lambda path: (512, len(data) + (update.SPACE_MARGIN_BLOCKS + 8) * 512)
        root = scratch(KEY_A)
        with open(root + install.KEY_TABLE_FILE, 'wb') as f:
            f.write(b'another key, another layout')     # in the way: removed, not kept
        steps, pending = _head_job_steps(root, data)
    finally:
        update.fs_space = saved
    assert pending == 'a'
    assert not update.storage.exists(root + install.KEY_TABLE_FILE)
    assert 120 < steps < 200, steps    # 128 slices of tables, 26 of verify, as before


def test_a_heap_that_runs_out_in_the_check_is_a_refusal_not_a_crash():
    # the board's fixed heap may run out while a head is checked (a key's tables built on
    # 96 KiB): the control step goes on, the download is dropped and named
    root = scratch(KEY_A)
    data = _b(BUNDLE_OK)
    n = 8 + int.from_bytes(data[4:8], 'big')
    u = make(root)
    u.command('fota_begin', {'size': len(data), 'id': bid(data)}, 0)
    assert u.command('fota_chunk', {'off': 0, 'data': data[:n]}, 0)[0]

    def exhausted():
        yield 1
        raise MemoryError('memory allocation failed, allocating 8192 bytes')
    u.dl.job = exhausted()
    for _ in range(3):
        u.tick(0, 0)                # no exception reaches the step
    assert u.dl is None
    r = u.command('fota_chunk', {'off': n, 'data': data[n:n + 50]}, 0)
    assert not r[0] and r[1] == 'V2G-601' and 'not enough RAM' in r[2], r
    assert u.report()['pending'] is None and u.st['dl'] is None
    assert any(it[1] == 'V2G-601' for it in u.log.items)
