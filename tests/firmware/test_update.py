"""The update installer (app/update.py) and the slot choice at boot (boot.py).

Each test works in its own scratch folder. The bundles are the host signer's vectors of
test_cose.py: BUNDLE_OK is sequence 7, security counter 2, board "sim", version "1.4.0",
signed by KEY_A, with components main.py (13 bytes), core/empty.py (0), lib/blob.bin (768).
"""
import hashlib
import json
import os

import boot
from fwtest import raises
from test_cose import BUNDLE_OK, KEY_A, KEY_B, _b

from app import storage, update

try:
    import tempfile
    _TMP = tempfile.gettempdir()
except ImportError:   # MicroPython: the VM's in-memory filesystem
    _TMP = '/tmp'

_n = [0]


class Log:
    def __init__(self):
        self.items = []

    def append(self, t_ms, code, on, msg):
        self.items.append((t_ms, code, on, msg))


class Out:
    contactor = False


class Ctl:
    def __init__(self):
        self.out = Out()


class Hal:
    def __init__(self):
        self.resets = 0
        self.safe = 0

    def safe_state(self):
        self.safe += 1

    def reset(self):
        # the HAL contract: outputs to the safe state, then the reset
        self.safe_state()
        self.resets += 1


def scratch(key=KEY_A):
    _n[0] += 1
    root = '{}/fota_{}_{}/'.format(_TMP, os.getpid() if hasattr(os, 'getpid') else 0, _n[0])
    update._rmtree(root[:-1])
    os.mkdir(root[:-1])
    if key:
        with open(root + 'update_key.bin', 'wb') as f:
            f.write(_b(key))
    return root


def bundle():
    return _b(BUNDLE_OK)


def bid(data):
    n = 8 + int.from_bytes(data[4:8], 'big')
    return hashlib.sha256(data[:n]).digest()[:16]


def make(root, running='factory', board='sim', **kw):
    return update.Updater(board, root=root, running=running, log=kw.pop('log', Log()), **kw)


def send(u, off, data, now=0):
    """fota_chunk; while the head is being checked (answer 'verifying ...'), the station's
    steps (u.tick) run the check's slices and the chunk is sent again."""
    r = u.command('fota_chunk', {'off': off, 'data': data}, now)
    while r[0] and r[2].startswith('verifying'):
        u.tick(now, 0)
        r = u.command('fota_chunk', {'off': off, 'data': data}, now)
    d = u.dl
    if r[0] and d is not None and d.job is not None and d.head_len and len(d.head) == d.head_len:
        while u.dl is not None and u.dl.job is not None:
            u.tick(now, 0)
        # the host's next chunk: the rest of this one, or the head's refusal
        return send(u, r[3]['next'], data[r[3]['next'] - off:], now) if u.dl is None or \
            r[3]['next'] < off + len(data) else r
    return r


def push(u, data, size=100, start=0, now=0):
    """Send data[start:] in chunks; returns the last result."""
    r = None
    off = start
    while off < len(data):
        r = send(u, off, data[off:off + size], now)
        assert r[0], r
        off = r[3]['next']
    return r


def read(path):
    with open(path, 'rb') as f:
        return f.read()


def state(root):
    if not storage.exists(root + 'update.json'):
        return update.default_state()
    return json.loads(read(root + 'update.json'))


def install(root, data=None, tries=3):
    data = data or bundle()
    u = make(root)
    assert u.command('fota_begin', {'size': len(data), 'id': bid(data)}, 0)[0]
    push(u, data)
    r = u.command('fota_finish', {'reboot': False, 'tries': tries}, 0)
    assert r[0], r
    return u, r


# -- receiving and staging ------------------------------------------------------------------

def test_install_stages_files_and_marks_pending():
    root = scratch()
    u, r = install(root)
    assert r[3]['slot'] == 'a' and r[3]['version'] == '1.4.0' and r[3]['seq'] == 7
    data = bundle()
    body = data[8 + int.from_bytes(data[4:8], 'big'):]
    assert read(root + 'slots/a/main.py') == body[:13]
    assert read(root + 'slots/a/core/empty.py') == b''
    assert read(root + 'slots/a/lib/blob.bin') == body[13:]
    st = state(root)
    assert st['pending'] == 'a' and st['tries'] == 3 and st['trial'] is False
    assert st['active'] == 'factory' and st['seq'] == 0 and st['dl'] is None
    assert update._file_size(root + 'slots/a.head') < 0
    assert u.version() == u.factory_version   # nothing runs the new slot before a reboot


def test_a_file_where_a_folder_goes_is_named_by_what_was_being_done():
    # a file already where the bundle needs a folder: the refusal says which and why, in
    # words (the VM's OSError carries an Emscripten errno number that means nothing here)
    root = scratch()
    data = bundle()
    head = 8 + int.from_bytes(data[4:8], 'big')
    u = make(root)
    assert u.command('fota_begin', {'size': len(data), 'id': bid(data)}, 0)[0]
    push(u, data[:head + 13])                       # the head and main.py
    with open(root + 'slots/a/lib', 'wb') as f:     # where lib/blob.bin's folder goes
        f.write(b'x')
    r = send(u, head + 13, data[head + 13:head + 113], 0)
    assert not r[0] and r[1] == 'V2G-601', r
    assert 'lib/blob.bin' in r[2] and 'slots/a/lib' in r[2] and 'a file is in the way' in r[2], r
    assert 'rrno' not in r[2] and not r[2].rstrip().split(' ')[-1].isdigit(), r
    assert state(root)['pending'] is None and state(root)['dl'] is None   # the download was dropped


def test_resent_overlapping_and_gapped_chunks():
    root = scratch()
    data = bundle()
    u = make(root)
    u.command('fota_begin', {'size': len(data), 'id': bid(data)}, 0)
    r = send(u, 0, data[:400], 0)
    assert r[3]['next'] == 400
    r = send(u, 0, data[:400], 0)     # re-sent: no effect
    assert r[0] and r[3]['next'] == 400
    r = send(u, 300, data[300:700], 0)  # overlap: tail taken
    assert r[0] and r[3]['next'] == 700
    r = send(u, 800, data[800:900], 0)  # gap: refused
    assert not r[0] and r[1] == 'V2G-400' and r[3]['next'] == 700
    push(u, data, 333, 700)
    assert u.command('fota_finish', {'reboot': False}, 0)[0]
    assert read(root + 'slots/a/lib/blob.bin')[-5:] == data[-5:]


def test_resume_after_reset_rehashes_the_staged_files():
    data = bundle()
    for cut in (5, 100, 400, 700, len(data) - 1):
        root = scratch()
        u = make(root)
        u.command('fota_begin', {'size': len(data), 'id': bid(data)}, 0)
        push(u, data[:cut], 300)
        u = make(root)                       # a reset: RAM state gone
        dl = u.command('fota_status', {}, 0)[3].get('dl')
        head_len = 8 + int.from_bytes(data[4:8], 'big')
        if cut < head_len:
            # the head lived in RAM only and claimed nothing: the host begins again
            assert dl is None and state(root)['dl'] is None
            assert u.command('fota_begin', {'size': len(data), 'id': bid(data)}, 0)[0]
            dl = {'next': 0, 'id': bid(data), 'size': len(data)}
        else:
            assert dl['next'] == cut
        assert dl['id'] == bid(data) and dl['size'] == len(data)
        push(u, data, 64, dl['next'])
        r = u.command('fota_finish', {'reboot': False}, 0)
        assert r[0], (cut, r)


def test_resume_with_a_corrupted_staged_file_fails_on_digest():
    root = scratch()
    data = bundle()
    u = make(root)
    u.command('fota_begin', {'size': len(data), 'id': bid(data)}, 0)
    push(u, data[:len(data) - 200], 300)
    with open(root + 'slots/a/lib/blob.bin', 'r+b') as f:
        f.seek(10)
        f.write(b'\xff')
    u = make(root)
    r = push_expect_fail(u, data)
    assert r[1] == 'V2G-601' and r[2].startswith('digest'), r
    assert state(root)['pending'] is None and state(root)['dl'] is None


def push_expect_fail(u, data):
    off = u.command('fota_status', {}, 0)[3]['dl']['next']
    while off < len(data):
        r = send(u, off, data[off:off + 100], 0)
        if not r[0]:
            return r
        off = r[3]['next']
    return u.command('fota_finish', {'reboot': False}, 0)


def test_stalled_download_is_suspended_then_resumed():
    root = scratch()
    data = bundle()
    u = make(root)
    u.command('fota_begin', {'size': len(data), 'id': bid(data)}, 0)
    send(u, 0, data[:500], 0)
    assert u.busy
    u.tick(update.STALL_MS + 1, 0)
    assert u.dl.suspended and u.dl.f is None and u.dl.body is None
    st = u.command('fota_status', {}, update.STALL_MS + 2)[3]
    assert st['dl']['next'] == 500 and not st['dl']['suspended']
    push(u, data, 200, 500)
    assert u.command('fota_finish', {'reboot': False}, 0)[0]


# -- refusals leave everything as it was ------------------------------------------------------

def _refused(root, u, code, what):
    before = read(root + 'update.json') if storage.exists(root + 'update.json') else None
    data = bundle()

    def run():
        r = u.command('fota_begin', {'size': len(data), 'id': bid(data)}, 0)
        if not r[0]:
            return r
        off = 0
        while off < len(data):
            r = send(u, off, data[off:off + 150], 0)
            if not r[0]:
                return r
            off = r[3]['next']
        return u.command('fota_finish', {'reboot': False}, 0)
    r = run()
    assert not r[0] and r[1] == code and r[2].startswith(what), r
    st = state(root)
    assert st['pending'] is None and st['dl'] is None
    if before is not None:
        b = json.loads(before)
        assert st['active'] == b['active'] and st['seq'] == b['seq'] and st['sec'] == b['sec']
    assert not update._is_dir(root + 'slots/a') or not storage.exists(root + 'slots/a/main.py')
    assert u.dl is None
    return r


def test_rollback_refused_by_sequence_and_security_counter():
    root = scratch()
    st = update.default_state()
    st['seq'] = 7
    with open(root + 'update.json', 'w') as f:
        f.write(json.dumps(st))
    _refused(root, make(root), 'V2G-602', 'rollback')
    st['seq'] = 1
    st['sec'] = 3
    with open(root + 'update.json', 'w') as f:
        f.write(json.dumps(st))
    _refused(root, make(root), 'V2G-602', 'rollback')


def test_other_board_wrong_key_and_no_key_refused():
    root = scratch()
    _refused(root, make(root, board='pyboard'), 'V2G-601', 'board')
    root = scratch(KEY_B)
    _refused(root, make(root), 'V2G-601', 'kid')
    root = scratch(None)
    _refused(root, make(root), 'V2G-601', 'key')


def test_bad_signature_and_bad_digest_refused():
    data = bytearray(bundle())
    n = 8 + int.from_bytes(data[4:8], 'big')
    for pos, what in ((n - 3, 'signature'), (n + 20, 'digest'), (len(data) - 1, 'digest')):
        root = scratch()
        bad = bytearray(data)
        bad[pos] ^= 0x40
        u = make(root)
        r = u.command('fota_begin', {'size': len(bad), 'id': bid(bad)}, 0)
        assert r[0]
        off, r = 0, None
        while off < len(bad):
            r = send(u, off, bytes(bad[off:off + 100]), 0)
            if not r[0]:
                break
            off = r[3]['next']
        assert not r[0] and r[1] == 'V2G-601' and r[2].startswith(what), r
        assert state(root)['pending'] is None and u.dl is None
        assert not storage.exists(root + 'slots/a/lib/blob.bin')


def test_head_not_matching_the_announced_id_refused():
    root = scratch()
    data = bundle()
    u = make(root)
    u.command('fota_begin', {'size': len(data), 'id': b'\x00' * 16}, 0)
    r = send(u, 0, data[:900], 0)
    assert not r[0] and r[1] == 'V2G-601' and r[2].startswith('header'), r


def test_oversize_and_endless_streams_refused():
    root = scratch()
    data = bundle()
    u = make(root)
    too_big = 8 + 8192 + update.SLOT_SIZE + 1
    r = u.command('fota_begin', {'size': too_big, 'id': bid(data)}, 0)
    assert not r[0] and r[1] == 'V2G-601' and r[2].startswith('size'), r
    # announced size larger than the manifest's: refused once the manifest is read
    r = u.command('fota_begin', {'size': len(data) + 1000, 'id': bid(data)}, 0)
    assert r[0]
    r = send(u, 0, data[:600], 0)
    assert not r[0] and r[2].startswith('trailing'), r
    # an endless stream: bytes past the announced size are refused and the download dropped
    u.command('fota_begin', {'size': len(data), 'id': bid(data)}, 0)
    push(u, data, 200)
    r = send(u, len(data), b'\x00' * 100, 0)
    assert not r[0] and r[1] == 'V2G-601' and r[2].startswith('trailing'), r
    assert state(root)['pending'] is None and u.dl is None
    # chunk and argument limits
    u.command('fota_begin', {'size': len(data), 'id': bid(data)}, 0)
    r = send(u, 0, b'\x00' * (update.MAX_CHUNK + 1), 0)
    assert not r[0] and r[1] == 'V2G-400' and r[2].startswith('data'), r
    for args in ({'size': 'x', 'id': bid(data)}, {'size': 100}, {}):
        r = u.command('fota_begin', args, 0)
        assert not r[0] and r[1] == 'V2G-400', r
    r = u.command('fota_finish', {'reboot': False}, 0)
    assert not r[0] and r[2].startswith('truncated'), r


def test_no_transfer_while_the_contactor_is_closed():
    root = scratch()
    ctl = Ctl()
    ctl.out.contactor = True
    u = make(root, ctl=ctl)
    data = bundle()
    r = u.command('fota_begin', {'size': len(data), 'id': bid(data)}, 0)
    assert not r[0] and r[1] == 'V2G-400' and 'contactor' in r[2]
    assert u.command('fota_status', {}, 0)[0]


def _slot_files(root, slot='a'):
    return [read(root + 'slots/' + slot + '/' + n) for n in ('main.py', 'core/empty.py', 'lib/blob.bin')]


def _send_all(u, data):
    r = u.command('fota_begin', {'size': len(data), 'id': bid(data)}, 0)
    if not r[0]:
        return r
    off = 0
    while off < len(data):
        r = send(u, off, bytes(data[off:off + 150]), 0)
        if not r[0]:
            return r
        off = r[3]['next']
    return u.command('fota_finish', {'reboot': False}, 0)


def test_failing_bundle_leaves_a_staged_pending_slot_alone():
    # a slot staged and pending its trial is replaced only by a bundle whose head verified
    data = bundle()
    n = 8 + int.from_bytes(data[4:8], 'big')
    bad = bytearray(data)
    bad[n - 3] ^= 0x40                                  # the signature
    for board, b, what in (('sim', bad, 'signature'), ('pyboard', data, 'board')):
        root = scratch()
        install(root)
        files = _slot_files(root)
        before = read(root + 'update.json')
        r = _send_all(make(root, board=board), b)
        assert not r[0] and r[1] == 'V2G-601' and r[2].startswith(what), r
        assert read(root + 'update.json') == before and _slot_files(root) == files
        assert boot.choose(root) == 'a'                 # still boots on trial
    root = scratch()
    install(root)
    u = make(root)
    assert u.command('fota_begin', {'size': len(data), 'id': bid(data)}, 0)[0]
    send(u, 0, data[:n - 1], 0)
    assert state(root)['pending'] == 'a'               # head not complete: nothing claimed
    assert u.command('fota_abort', {}, 0)[0]
    assert state(root)['pending'] == 'a' and _slot_files(root)[2] == data[n + 13:]
    r = _send_all(make(root), data)                      # a good bundle replaces it
    assert r[0] and r[3]['slot'] == 'a' and state(root)['pending'] == 'a'


def test_not_enough_space_refused_before_anything_is_touched():
    data = bundle()
    saved = update.fs_space
    try:
        # the announced size alone does not fit: refused at fota_begin
        root = scratch()
        install(root)
        staged = update._tree_bytes(root + 'slots/a')
        before = read(root + 'update.json')
        update.fs_space = lambda path: (512, 100)
        r = make(root).command('fota_begin', {'size': len(data), 'id': bid(data)}, 0)
        assert not r[0] and r[1] == 'V2G-601' and r[2].startswith('space'), r
        need = len(data) + update.SPACE_MARGIN_BLOCKS * 512
        assert 'needs {} bytes'.format(need) in r[2] and '{} free'.format(100 + staged) in r[2], r
        assert read(root + 'update.json') == before and boot.choose(root) == 'a'
        # the announced size fits, the manifest's files in whole blocks do not: refused once
        # the manifest is verified, still before the slot is emptied
        update.fs_space = saved
        root = scratch()
        install(root)
        before = read(root + 'update.json')
        free = len(data) + update.SPACE_MARGIN_BLOCKS * 512 - staged
        update.fs_space = lambda path: (512, free)
        r = _send_all(make(root), data)
        assert not r[0] and r[1] == 'V2G-601' and r[2].startswith('space: the manifest'), r
        assert read(root + 'update.json') == before and _slot_files(root)[0] == data[-781:-768]
        # enough room: accepted
        update.fs_space = lambda path: (512, 64 * 1024)
        assert _send_all(make(root), data)[0]
    finally:
        update.fs_space = saved
    assert update.fs_space(root) is None or update.fs_space(root)[1] > 0


def _confirmed(root):
    install(root)
    assert boot.choose(root) == 'a'
    make(root, running='a').confirm(0)
    st = state(root)
    assert st['seq'] == 7 and st['sec'] == 2
    assert read(root + 'update.json.bak') == read(root + 'update.json')


def test_counters_survive_losing_either_state_copy():
    data = bundle()
    for damage in ('remove main', 'garble main', 'main rolled back', 'remove backup'):
        root = scratch()
        _confirmed(root)
        if damage == 'remove main':
            os.remove(root + 'update.json')
        elif damage == 'garble main':
            with open(root + 'update.json', 'w') as f:
                f.write('{"seq": ')
        elif damage == 'main rolled back':
            st = state(root)
            st['seq'], st['sec'] = 0, 0
            with open(root + 'update.json', 'w') as f:
                f.write(json.dumps(st))
        else:
            os.remove(root + 'update.json.bak')
        assert boot.choose(root) == 'a', damage
        u = make(root, running='a')
        assert u.report()['seq'] == 7 and u.report()['sec'] == 2, damage
        r = _send_all(u, data)                        # sequence 7 again: still a rollback
        assert not r[0] and r[1] == 'V2G-602' and r[2].startswith('rollback'), (damage, r)


def test_no_readable_state_with_slots_refuses_updates():
    data = bundle()
    root = scratch()
    _confirmed(root)
    os.remove(root + 'update.json')
    with open(root + 'update.json.bak', 'w') as f:
        f.write('garbage')
    u = make(root)
    assert u.report()['state'] == 'unreadable'
    r = u.command('fota_begin', {'size': len(data), 'id': bid(data)}, 0)
    assert not r[0] and r[1] == 'V2G-602' and r[2].startswith('state'), r
    assert 'update.json.bak' in r[2] and storage.exists(root + 'slots/a/main.py')
    assert not storage.exists(root + 'update.json')    # nothing written over what is left
    assert boot.choose(root) == 'factory'
    # a fresh controller (no slots, no state) takes updates
    root = scratch()
    assert 'state' not in make(root).report()
    assert _send_all(make(root), data)[0]


def test_boot_takes_the_new_state_a_fat_replace_left_in_tmp():
    # FAT: update.json removed, the reset came before the rename of update.json.tmp
    root = scratch()
    install(root)
    data = read(root + 'update.json')
    os.remove(root + 'update.json')
    os.remove(root + 'update.json.bak')
    with open(root + 'update.json.tmp', 'wb') as f:
        f.write(data)
    assert boot.choose(root) == 'a'
    assert state(root)['trial'] is True and read(root + 'update.json.bak') == read(root + 'update.json')


# -- trial boot, confirmation, revert -----------------------------------------------------

def test_boot_runs_pending_on_trial_and_health_check_confirms():
    root = scratch()
    install(root)
    assert boot.choose(root) == 'a'
    st = state(root)
    assert st['tries'] == 2 and st['trial'] is True and st['pending'] == 'a'
    log = Log()
    u = make(root, running='a', log=log, hal=Hal())
    assert u.on_trial and u.busy and u.version() == '1.4.0'
    r = u.command('fota_begin', {'size': 100, 'id': b'\x00' * 16}, 0)
    assert not r[0] and 'trial' in r[2]            # no new download during a trial
    u.tick(1000, 0)
    u.tick(update.HEALTHY_MS + 100, 0)                 # no host frames yet: not healthy
    assert u.on_trial
    u.tick(update.HEALTHY_MS + 200, 5)                 # host frames arriving
    assert not u.on_trial
    st = state(root)
    assert st['active'] == 'a' and st['pending'] is None and st['seq'] == 7 and st['sec'] == 2
    assert boot.choose(root) == 'a'                    # confirmed: runs without trial
    assert state(root)['tries'] == 0
    u = make(root, running='a')
    assert u.version() == '1.4.0' and u.inactive_slot() == 'b'


def test_failed_trials_revert_after_the_tries():
    root = scratch()
    install(root, tries=2)
    hal = Hal()
    for _ in range(2):
        assert boot.choose(root) == 'a'
        log = Log()
        u = make(root, running='a', log=log, hal=hal)
        assert u.on_trial
        u.tick(0, 0)
        u.tick(update.DEFAULT_TRIAL_MS + 1, 0)         # never healthy: a reset is asked for
        assert u.reset_at is not None and log.items[-1][1] == 'V2G-603'
        u.tick(update.DEFAULT_TRIAL_MS + 2, 0)
    assert hal.resets == 2 and hal.safe == 2
    assert boot.choose(root) == 'factory'              # no tries left: reverted
    st = state(root)
    assert st['pending'] is None and st['active'] == 'factory' and st['seq'] == 0
    assert 'failed its trial boot' in st['reverted']
    log = Log()
    u = make(root, running='factory', log=log)
    assert [e[1] for e in log.items] == ['V2G-603']    # reported once, at the next start
    assert state(root)['reverted'] is None
    make(root, log=log)
    assert len(log.items) == 1


def test_slot_failing_at_import_reverts_after_its_tries():
    # slot code that raises while app.run is imported never reaches its HAL or its health
    # check: main.py's guard counts it as a failed trial and resets; boot.py reverts after
    # the last try. Outside a trial the error is not swallowed.
    import sys

    import main as fw_main
    root = scratch()
    install(root, tries=2)
    resets = []

    def broken():
        raise ImportError('no module named core.missing')
    for n in range(2):
        assert boot.choose(root) == 'a' and boot.ON_TRIAL
        sys.path.insert(0, root + 'slots/a')
        try:
            assert fw_main.on_trial(root)
            fw_main.run(broken, root, lambda n=n: resets.append(n))
        finally:
            sys.path.pop(0)
        assert resets == list(range(n + 1))
    assert boot.choose(root) == 'factory' and not boot.ON_TRIAL
    st = state(root)
    assert st['pending'] is None and st['active'] == 'factory' and 'failed its trial' in st['reverted']
    assert not fw_main.on_trial(root)
    raises(ImportError, fw_main.run, broken, root, lambda: resets.append('no'))
    assert len(resets) == 2
    assert fw_main.run(lambda: 'started', root) == 'started'


def _start_slot(root, slot, start, resets):
    """main.py's run() with `slot` in front of sys.path as boot.py puts it; sys.path as it was
    afterwards (a fallback takes the slot off itself)."""
    import sys

    import main as fw_main
    saved = list(sys.path)
    sys.path.insert(0, root + 'slots/' + slot)
    try:
        return fw_main.run(start, root, lambda: resets.append(slot)), sys.path[0]
    finally:
        sys.path[:] = saved


def test_confirmed_slot_failing_to_start_falls_back_to_factory():
    # a damaged file in the confirmed slot: main.py records the failure, makes the factory
    # tree active and resets; the next start reports V2G-604 once, fota_status keeps it
    import sys
    root = scratch()
    install(root)
    assert boot.choose(root) == 'a'
    make(root, running='a').confirm(0)
    assert state(root)['slots']['a']['confirmed'] is True
    assert boot.choose(root) == 'a' and not boot.ON_TRIAL
    # a module of the slot already imported when the failure comes must not stay cached
    with open(root + 'slots/a/slot_probe_mod.py', 'w') as f:
        f.write('X = 1\n')
    resets = []

    def broken():
        __import__('slot_probe_mod')
        raise SyntaxError('invalid syntax')
    result, first = _start_slot(root, 'a', broken, resets)
    assert result is None and resets == ['a']
    assert not first.endswith('slots/a') and 'slot_probe_mod' not in sys.modules
    st = state(root)
    assert st['active'] == 'factory' and st['seq'] == 7 and st['sec'] == 2   # counters kept
    assert st['failed_start'] == {'slot': 'a', 'version': '1.4.0', 'reason': 'SyntaxError: invalid syntax',
                                  'fallback': 'factory', 'reported': False}
    assert 'confirmed' not in st['slots']['a']
    assert read(root + 'update.json.bak') == read(root + 'update.json')
    assert boot.choose(root) == 'factory' and not boot.ON_TRIAL
    log = Log()
    u = make(root, running='factory', log=log)
    assert [e[1] for e in log.items] == ['V2G-604']
    assert log.items[0][3] == 'slot a (1.4.0) failed to start: SyntaxError: invalid syntax; running factory'
    rep = u.command('fota_status', {}, 0)[3]
    assert rep['running'] == 'factory' and rep['active'] == 'factory'
    assert rep['failed_start'] == {'slot': 'a', 'version': '1.4.0', 'reason': 'SyntaxError: invalid syntax'}
    make(root, log=log)
    assert len(log.items) == 1                         # reported once
    assert make(root).report()['failed_start']['slot'] == 'a'
    # the factory tree failing has nothing to fall back to: the error stands, no reset
    import main as fw_main
    def factory_broken():
        raise SyntaxError('invalid syntax')
    raises(SyntaxError, fw_main.run, factory_broken, root, lambda: resets.append('factory'))
    assert resets == ['a']


def test_a_slot_damaged_on_flash_is_caught_before_any_of_its_code_runs():
    # flash damage after the install: a truncated module may hang the import instead of
    # raising (MicroPython's .mpy loader), so boot.py checks the installer's file list first
    import binascii
    root = scratch()
    install(root)
    lines = read(root + 'slots/a.sums').decode().splitlines()
    body = read(root + 'slots/a/lib/blob.bin')
    digest = binascii.hexlify(hashlib.sha256(body).digest()).decode()
    assert '{} {} lib/blob.bin'.format(digest, len(body)) in lines and len(lines) == 3
    # pending: the damaged slot is reverted without a try, naming the file
    with open(root + 'slots/a/lib/blob.bin', 'wb') as f:
        f.write(body[:100])
    assert boot.choose(root) == 'factory' and not boot.ON_TRIAL
    st = state(root)
    assert st['pending'] is None and st['tries'] == 0 and 'lib/blob.bin damaged' in st['reverted'], st
    # confirmed: a failed start (V2G-604), the factory tree from this boot on
    root = scratch()
    install(root)
    assert boot.choose(root) == 'a'
    make(root, running='a').confirm(0)
    os.remove(root + 'slots/a/main.py')
    assert boot.choose(root) == 'factory'
    st = state(root)
    assert st['active'] == 'factory' and st['failed_start']['reason'] == 'main.py missing', st
    log = Log()
    make(root, running='factory', log=log)
    assert [e[1] for e in log.items] == ['V2G-604'] and 'main.py missing' in log.items[0][3]
    # a slot without its file list is not run either
    root = scratch()
    install(root)
    os.remove(root + 'slots/a.sums')
    assert boot.choose(root) == 'factory' and 'no file list' in state(root)['reverted']


def _two_slots(root, active, sec=2, a_sec=2, b_sec=2):
    for s in update.SLOTS:
        update._makedirs(root + 'slots/' + s)
        with open(root + 'slots/' + s + '.sums', 'w'):
            pass        # an empty file list: nothing to check
    st = update.default_state()
    st.update({'active': active, 'seq': 9, 'sec': sec, 'slots': {
        'a': {'version': '1.4.0', 'seq': 7, 'sec': a_sec, 'confirmed': True},
        'b': {'version': '1.5.0', 'seq': 9, 'sec': b_sec, 'confirmed': True}}})
    storage.write_atomic(root + 'update.json', json.dumps(st).encode())
    storage.write_atomic(root + 'update.json.bak', json.dumps(st).encode())


def test_confirmed_slot_failing_to_start_falls_back_to_the_other_confirmed_slot():
    root = scratch()
    _two_slots(root, 'b')
    resets = []

    def broken():
        raise ImportError("can't import name Station")
    assert boot.choose(root) == 'b'
    _start_slot(root, 'b', broken, resets)
    st = state(root)
    assert st['active'] == 'a' and st['failed_start']['fallback'] == 'a' and resets == ['b']
    assert boot.choose(root) == 'a'
    # the fallback fails too: the slot that failed before is no fallback any more
    _start_slot(root, 'a', broken, resets)
    st = state(root)
    assert st['active'] == 'factory' and st['failed_start']['slot'] == 'a' and resets == ['b', 'a']
    assert boot.choose(root) == 'factory'
    log = Log()
    make(root, log=log)
    assert log.items[0][1] == 'V2G-604' and 'slot a (1.4.0)' in log.items[0][3]


def test_no_fallback_to_a_slot_below_the_security_counter():
    # slot b raised the security counter: a is a build never to run again
    root = scratch()
    _two_slots(root, 'b', sec=3, a_sec=2, b_sec=3)
    _start_slot(root, 'b', lambda: 1 // 0, [])
    st = state(root)
    assert st['active'] == 'factory' and st['failed_start']['reason'].startswith('ZeroDivisionError')
    assert st['sec'] == 3


def test_failed_start_with_the_state_unreadable_stays_at_the_repl():
    import main as fw_main
    root = scratch()
    _two_slots(root, 'a')
    for name in ('update.json', 'update.json.bak'):
        with open(root + name, 'w') as f:
            f.write('{"active": ')
    resets = []

    def broken():
        raise ImportError('no module named app.run')
    e = raises(ImportError, _start_slot, root, 'a', broken, resets)
    assert 'app.run' in str(e) and resets == []
    assert fw_main.running_slot() is None


def test_trial_starts_the_watchdog_where_the_port_has_one():
    import sys
    started = []

    class FakeMachine:
        class WDT:
            def __init__(self, timeout):
                started.append(timeout)
    saved = sys.modules.get('machine')
    sys.modules['machine'] = FakeMachine
    try:
        assert isinstance(boot.start_trial_watchdog(), FakeMachine.WDT)
    finally:
        if saved is None:
            del sys.modules['machine']
        else:
            sys.modules['machine'] = saved
    assert started == [boot.TRIAL_WDT_MS]
    if saved is None:
        assert boot.start_trial_watchdog() is None     # no machine module: no watchdog


def test_reset_waits_for_the_contactor_to_open():
    root = scratch()
    ctl, hal = Ctl(), Hal()
    data = bundle()
    u = make(root, ctl=ctl, hal=hal)
    u.command('fota_begin', {'size': len(data), 'id': bid(data)}, 0)
    push(u, data)
    assert u.command('fota_finish', {}, 0)[3]['reboot'] is True
    ctl.out.contactor = True
    u.tick(50, 0)
    assert hal.resets == 0
    ctl.out.contactor = False
    u.tick(100, 0)
    assert hal.resets == 1 and hal.safe == 1


def test_boot_choice_survives_bad_state():
    root = scratch()
    assert boot.choose(root) == 'factory'             # no state file
    with open(root + 'update.json', 'w') as f:
        f.write('{"active": "a", ')                     # torn (cannot happen with rename)
    assert boot.choose(root) == 'factory'
    with open(root + 'update.json', 'w') as f:
        f.write(json.dumps({'active': 'b', 'pending': None}))
    assert boot.choose(root) == 'factory'             # slot b missing: factory
    with open(root + 'update.json', 'w') as f:
        f.write(json.dumps({'active': 'factory', 'pending': 'b', 'tries': 3}))
    assert boot.choose(root) == 'factory'             # pending slot missing: reverted
    assert state(root)['pending'] is None and state(root)['reverted']


def test_second_update_goes_to_the_other_slot():
    root = scratch()
    install(root)
    boot.choose(root)
    u = make(root, running='a')
    u.confirm(0)
    data = bundle()
    u = make(root, running='a')
    r = u.command('fota_begin', {'size': len(data), 'id': bid(data)}, 0)
    assert r[0] and r[3]['slot'] == 'b'
    r = send(u, 0, data[:900], 0)
    assert not r[0] and r[1] == 'V2G-602'              # sequence 7 is installed now
    assert storage.exists(root + 'slots/a/main.py') and state(root)['active'] == 'a'


# -- power cuts played by the simulated board's flash (board/power_cut.py; the virtual
# board's power-cut tests use it) -----------------------------------------------------------

def _armed(root, step):
    from board import power_cut
    with open(root + 'fota_fault.json', 'w') as f:
        f.write('{"step": "%s"}' % step)
    return power_cut.arm(root)


def test_power_cut_at_the_state_update_leaves_the_old_state():
    from board import power_cut
    root = scratch()
    data = bundle()
    u = make(root)
    u.command('fota_begin', {'size': len(data), 'id': bid(data)}, 0)
    push(u, data)
    before = read(root + 'update.json')              # written when the head claimed the slot
    cut = _armed(root, 'state')
    try:
        r = u.command('fota_finish', {'reboot': False}, 0)
        assert not r[0] and cut.dead and r[1] == 'V2G-601'
    finally:
        power_cut.disarm()
    assert read(root + 'update.json') == before and storage.exists(root + 'update.json.tmp')
    assert not storage.exists(root + 'fota_fault.json')
    assert boot.choose(root) == 'factory'
    u = make(root)                                     # after the reset: finish again
    assert u.command('fota_status', {}, 0)[3]['dl']['next'] == len(data)
    assert u.command('fota_finish', {'reboot': False}, 0)[0]
    assert boot.choose(root) == 'a'


def test_power_cut_while_writing_leaves_half_a_chunk_unacknowledged():
    from board import power_cut
    root = scratch()
    data = bundle()
    u = make(root)
    u.command('fota_begin', {'size': len(data), 'id': bid(data)}, 0)
    cut = _armed(root, 'write')
    off, r = 0, None
    try:
        while off < len(data):
            try:
                r = send(u, off, data[off:off + 100], 0)
            except OSError:   # the abort's own write fails too: the station answers V2G-400
                r = (False, 'V2G-400', 'raised', {})
            if not r[0]:
                break
            off = r[3]['next']
        assert not r[0] and cut.dead and 0 < off < len(data)
    finally:
        power_cut.disarm()
    assert not storage.exists(root + 'fota_fault.json')
    u = make(root)                                     # after the reset: resumes where it was
    st = u.command('fota_status', {}, 0)[3]
    assert off < st['dl']['next'] < off + 100          # the half chunk on flash counts
    push(u, data, start=st['dl']['next'])
    assert u.command('fota_finish', {'reboot': False}, 0)[0]
    assert boot.choose(root) == 'a'


def test_an_unarmed_board_keeps_its_flash():
    from board import power_cut
    root = scratch()
    assert power_cut.arm(root) is None               # no fault file: nothing changes
    with open(root + 'fota_fault.json', 'w') as f:
        f.write('{"step": "melt"}')
    assert power_cut.arm(root) is None               # not a step the board knows


def test_key_from_pem():
    root = scratch(None)
    import binascii
    der = raises_free_der()
    with open(root + 'update_key.pem', 'wb') as f:
        f.write(b'-----BEGIN PUBLIC KEY-----\n' + binascii.b2a_base64(der) + b'-----END PUBLIC KEY-----\n')
    from app import install   # the download path, where the key is read
    key = install.load_key(root)
    assert key.point == _b(KEY_A)
    with open(root + 'update_key.pem', 'wb') as f:
        f.write(b'-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n')
    raises(ValueError, install.load_key, root)


def raises_free_der():
    from core import p256
    return p256.SPKI_PREFIX + _b(KEY_A)
