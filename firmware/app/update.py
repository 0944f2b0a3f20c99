"""Firmware update installer: receive a signed bundle, stage it in the inactive slot, mark it
for a trial boot, confirm it after a health check (docs/updates.md).

Layout on the controller's filesystem (paths relative to `root`, '' on the board):
- the flashed ("factory") firmware at the root: core/, app/, board/, main.py, boot.py;
- slots/a/ and slots/b/: each a firmware tree written from a bundle's components;
- slots/<x>.head: the bundle's header and COSE_Sign1 while a download is in progress;
- update.json: which slot is active, which is pending a trial, the stored sequence and
  security counter, and the download in progress. Always written whole (write_atomic),
  then again as update.json.bak; read from either, counters the higher of the two.

The bundle travels as one byte stream (b"V2GB" | u32 length | COSE_Sign1 | components)
in chunks. The first 8 + N bytes are held in RAM (N <= 8192) until the signature, the
manifest and the policy (board, rollback, size) pass; only then are component bytes
written, straight into their files in the inactive slot, and hashed as they pass
(manifest.BodyCheck). A hash state cannot be saved, so a download resumed after a reset
re-reads what is already in the slot's files (bounded, sequential) to rebuild it.

Every refusal leaves the running firmware and the active slot untouched, and a slot staged
and pending its trial too unless a verified head has claimed it: V2G-601 (signature,
manifest, board, size, space, digest), V2G-602 (rollback, or the counters unknown because
no copy of the state is readable), V2G-400 (bad request).
boot.py runs a pending slot on trial and reverts it after its tries; a revert is
reported here as V2G-603. A confirmed slot that fails to start is replaced as the active
firmware by main.py and boot.py (boot.fail_start); that is reported here as V2G-604.
"""
import json
import os
import sys

from core import manifest, ticks

from app import storage

STATE_FILE = 'update.json'
# A second copy of the state, written after the first by the same atomic path: the stored
# sequence and security counter (anti-rollback) must survive losing either file.
BACKUP_FILE = 'update.json.bak'
SLOTS = ('a', 'b')
KEY_FILES = ('update_key.bin', 'update_key.pem')   # raw 65-byte point, or SPKI PEM
FAULT_FILE = 'fota_fault.json'   # test-only fault injection (docs/updates.md)
SLOT_SIZE = 512 * 1024           # bytes of components one slot may hold
MAX_CHUNK = 1000                 # data bytes in one fota_chunk (a frame holds 1024)
DEFAULT_TRIES = 3                # trial boots before boot.py reverts
MAX_TRIES = 5
DEFAULT_TRIAL_MS = 120000        # the health check must pass within this after boot ...
HEALTHY_MS = 10000               # ... by running this long with the host link alive
LINK_ALIVE_MS = 3000             # "alive": a valid host frame within this
STALL_MS = 30000                 # a download idle this long is suspended (resumable)
READ_BLOCK = 1024                # re-hash block size on resume
# Free space kept beyond a slot's own blocks: update.json and its backup are rewritten
# copy-on-write several times during an update, and the event log and journal go on
# growing. littlefs needs a metadata pair (two blocks) per directory besides.
SPACE_MARGIN_BLOCKS = 16

V2G_400 = 'V2G-400'


class _Frozen(Exception):
    """Raised by the fault-injection hook: the installer stops making progress."""


def _is_dir(path):
    try:
        return os.stat(path)[0] & 0x4000 != 0
    except OSError:
        return False


def _rmtree(path):
    if _is_dir(path):
        for name in os.listdir(path):
            _rmtree(path + '/' + name)
        os.rmdir(path)
    elif storage.exists(path):
        os.remove(path)


def _in_the_way(path):
    """Why `path` could not be made, in words: ports number their errno values differently
    (the VM's are Emscripten's), so the reason is read from what is there."""
    if _is_dir(path):
        return 'a folder is in the way'
    if storage.exists(path):
        return 'a file is in the way'
    return 'the filesystem refused it (full or failing)'


def _makedirs(path):
    cur = ''
    for part in path.split('/'):
        if not part:
            continue
        cur = cur + '/' + part if cur else (part if path[0] != '/' else '/' + part)
        if not _is_dir(cur):
            try:
                os.mkdir(cur)
            except OSError:
                raise manifest.UpdateError('V2G-601', 'creating folder {}: {}'.format(
                    cur, _in_the_way(cur))) from None


def _create(name, mode, what):
    """open(name, mode) for staging component `what`; a refusal names the file and why."""
    try:
        _makedirs(name[:name.rfind('/')])
        return open(name, mode)
    except manifest.UpdateError as e:
        raise manifest.UpdateError(e.code, 'staging {}: {}'.format(what, e.msg)) from None
    except OSError:
        raise manifest.UpdateError('V2G-601', 'staging {}: opening {} for writing: {}'.format(
            what, name, _in_the_way(name))) from None


def _file_size(path):
    try:
        return os.stat(path)[6]
    except OSError:
        return -1


def fs_space(path):
    """(block size, free bytes) of the filesystem holding `path`, or None where os.statvfs
    is missing (the VM's os has none) or fails: then only the slot size bounds a bundle."""
    try:
        sv = os.statvfs(path or '.')
    except (AttributeError, OSError):
        return None
    block = sv[1] or sv[0]
    return block, block * sv[4]


def _tree_bytes(path):
    """Bytes of the files under path (what removing it gives back, at least)."""
    if _is_dir(path):
        n = 0
        for name in os.listdir(path):
            n += _tree_bytes(path + '/' + name)
        return n
    return max(0, _file_size(path))


def _blocks(n, block):
    return (n + block - 1) // block * block


def load_key(root=''):
    """The trusted update key (p256.PublicKey), or None when none is installed."""
    from core import p256   # its tables stay out of RAM until an update comes
    raw = storage.read_bytes(root + KEY_FILES[0])
    if raw is None:
        pem = storage.read_bytes(root + KEY_FILES[1])
        if pem is None:
            return None
        import binascii
        lines = [ln.strip() for ln in pem.split(b'\n')]
        der = binascii.a2b_base64(b''.join(ln for ln in lines if ln and not ln.startswith(b'-----')))
        if der[:len(p256.SPKI_PREFIX)] != p256.SPKI_PREFIX:
            raise ValueError('update key: not a P-256 public key')
        raw = der[len(p256.SPKI_PREFIX):]
    return p256.PublicKey(raw)


def default_state():
    return {'v': 1, 'active': 'factory', 'pending': None, 'tries': 0, 'trial': False,
            'trial_ms': DEFAULT_TRIAL_MS, 'healthy_ms': HEALTHY_MS, 'seq': 0, 'sec': 0, 'slots': {}, 'dl': None,
            'reverted': None, 'failed_start': None}


def running_slot():
    """The slot boot.py put in front of sys.path, or 'factory'."""
    first = sys.path[0] if sys.path else ''
    for s in SLOTS:
        if first.endswith('slots/' + s):
            return s
    return 'factory'


class _Download:
    """A bundle being received. RAM: the head (<= 8200 bytes) and one open file."""

    def __init__(self, slot, size, bid):
        self.slot = slot
        self.size = size
        self.id = bid            # 16 bytes: sha256 of header + COSE_Sign1, announced by the host
        self.head = bytearray()
        self.head_len = 0        # 8 + N once the header is in
        self.man = None
        self.body = None         # manifest.BodyCheck
        self.next = 0            # next bundle offset expected
        self.f = None            # open component file
        self.f_index = -1
        self.last_ms = 0
        self.suspended = False   # RAM state dropped; rebuilt from flash on the next chunk

    def close(self):
        if self.f is not None:
            self.f.close()
            self.f = None
            self.f_index = -1


class Updater:
    def __init__(self, board, root='', log=None, now_ms=0, hal=None, ctl=None, running=None,
                 fw_version='?', slot_size=SLOT_SIZE):
        self.board = board
        self.root = root
        self.log = log
        self.hal = hal
        self.ctl = ctl
        self.slot_size = slot_size
        self.factory_version = fw_version
        self.running = running_slot() if running is None else running
        self.boot_ms = now_ms
        self.key = None
        self.dl = None
        self.reset_at = None      # reset requested (after finish, or a failed trial)
        self.frozen = False       # fault injection: stop making progress
        self.link_frames = -1
        self.link_ms = None
        self.state_lost = False
        self.st = self._load_state()
        for k, v in default_state().items():
            if k not in self.st:
                self.st[k] = v
        self.fault = self._read_fault()
        rev = self.st.get('reverted')
        if rev:
            # boot.py reverted a slot that failed its trial: report it once
            if log is not None:
                log.append(now_ms, 'V2G-603', True, rev)
            self.st['reverted'] = None
            self._save()
        fs = self.st.get('failed_start')
        if isinstance(fs, dict) and not fs.get('reported'):
            # the confirmed firmware failed to start and the fallback runs: report it once;
            # the record stays for fota_status until another update is confirmed
            if log is not None:
                log.append(now_ms, 'V2G-604', True, 'slot {} ({}) failed to start: {}; running {}'.format(
                    fs.get('slot'), fs.get('version'), fs.get('reason'), fs.get('fallback')))
            fs['reported'] = True
            self._save()
        if self.on_trial and self.fault == 'trial':
            try:
                self._freeze()   # the trial never confirms: a power cut during the trial
            except _Frozen:
                pass

    # -- paths and state ------------------------------------------------------------------

    def path(self, name):
        return self.root + name

    def slot_dir(self, s):
        return self.path('slots/' + s)

    def _load_state(self):
        """update.json, or its backup when it is unreadable; the stored counters are the
        higher of the two valid copies (they only ever rise). With neither readable while
        slots exist, the counters are unknown: state_lost, and updates are refused."""
        copies = []
        for name in (STATE_FILE, BACKUP_FILE):
            st = storage.read_json(self.path(name), None)
            if (isinstance(st, dict) and type(st.get('seq', 0)) is int
                    and type(st.get('sec', 0)) is int):
                copies.append(st)
        if not copies:
            self.state_lost = _is_dir(self.slot_dir('a')) or _is_dir(self.slot_dir('b'))
            return default_state()
        st = copies[0]
        for c in copies[1:]:
            st['seq'] = max(st.get('seq', 0), c.get('seq', 0))
            st['sec'] = max(st.get('sec', 0), c.get('sec', 0))
        return st

    def _save(self):
        data = json.dumps(self.st).encode()
        storage.write_atomic(self.path(STATE_FILE), data)
        storage.write_atomic(self.path(BACKUP_FILE), data)

    def _save_step(self, step):
        """Write the state; with a fault for `step`, write the temporary file and stop there
        (what a power cut between the write and the rename leaves)."""
        if self.fault == step:
            with open(self.path(STATE_FILE) + '.tmp', 'wb') as f:
                f.write(json.dumps(self.st).encode())
            self._freeze()
        self._save()

    def _read_fault(self):
        f = storage.read_json(self.path(FAULT_FILE), None)
        return f.get('step') if isinstance(f, dict) else None

    def _freeze(self):
        # one-shot: the file goes first, so the boot after the power cut runs normally
        try:
            os.remove(self.path(FAULT_FILE))
        except OSError:
            pass
        self.fault = None
        self.frozen = True
        raise _Frozen()

    @property
    def on_trial(self):
        p = self.st['pending']
        return p is not None and self.st['trial'] and self.running == p

    @property
    def busy(self):
        """The station calls tick() only while this is true."""
        return self.on_trial or self.reset_at is not None or self.dl is not None

    def version(self):
        """The version of the firmware running now (the manifest's for a slot)."""
        if self.running in SLOTS:
            meta = self.st['slots'].get(self.running)
            if meta:
                return meta['version']
        return self.factory_version

    def inactive_slot(self):
        r = self.running if self.running in SLOTS else self.st['active']
        return 'b' if r == 'a' else 'a'

    # -- host commands --------------------------------------------------------------------

    def command(self, op, args, now_ms):
        """(ok, code, msg, data) for a fota_* op. Never raises for bad input."""
        if op == 'fota_report':   # diagnostics: read only, answered even mid-session
            return True, None, 'update slots', self.report()
        if self.frozen:
            return False, V2G_400, 'installer halted by fault injection', {}
        if op not in ('fota_status', 'fota_abort') and self._energy_flows():
            # key load, signature and resume re-hash hold the control step for a while
            return False, V2G_400, '{}: not while the contactor is closed'.format(op), {}
        try:
            if op == 'fota_status':
                return True, None, 'update status', self.status(now_ms)
            if op == 'fota_begin':
                return self.begin(args.get('size'), args.get('id'), now_ms)
            if op == 'fota_chunk':
                return self.chunk(args.get('off'), args.get('data'), now_ms)
            if op == 'fota_finish':
                return self.finish(args, now_ms)
            if op == 'fota_abort':
                return self.abort('aborted by the host')
            if op == 'fota_confirm':
                if not self.on_trial:
                    return False, V2G_400, 'fota_confirm: no update on trial', {}
                return self.confirm(now_ms)
            return False, V2G_400, 'op: unknown update command {!r}'.format(op), {}
        except manifest.UpdateError as e:
            self.abort(str(e))
            return False, e.code, e.msg, {}
        except _Frozen:
            return False, V2G_400, 'installer halted by fault injection', {}
        except OSError:
            # filesystem full or failing: nothing is marked pending; the slot is left as is
            # named by the step, not by str(e): that is a bare errno number on some ports
            self.abort('filesystem error during ' + op)
            return False, 'V2G-601', 'filesystem error during {}: the filesystem refused a write or ' \
                'read (full or failing)'.format(op), {}

    def status(self, now_ms):
        if not self._energy_flows():
            self._resume_if_needed(now_ms)
        return self.report()

    def report(self):
        """Slots, counters and any download in progress, without side effects (diagnostics)."""
        st = self.st
        out = {'running': self.running, 'version': self.version(), 'active': st['active'],
               'pending': st['pending'], 'trial': self.on_trial, 'tries': st['tries'],
               'seq': st['seq'], 'sec': st['sec']}
        if self.state_lost:
            out['state'] = 'unreadable'
        fs = st.get('failed_start')
        if isinstance(fs, dict):
            out['failed_start'] = {'slot': fs.get('slot'), 'version': fs.get('version'),
                                   'reason': fs.get('reason')}
        d = self.dl
        if d is not None:
            out['dl'] = {'slot': d.slot, 'size': d.size, 'id': d.id, 'next': d.next,
                         'suspended': d.suspended}
        return out

    def begin(self, size, bid, now_ms):
        if type(size) is not int or size < manifest.HEADER_LEN + 1:
            return False, V2G_400, 'size: must be the bundle length in bytes', {}
        if type(bid) is not bytes or len(bid) != 16:
            return False, V2G_400, 'id: must be the first 16 bytes of sha256(header + COSE_Sign1)', {}
        limit = manifest.HEADER_LEN + manifest.cose.MAX_COSE_LEN + self.slot_size
        if size > limit:
            raise manifest.UpdateError('V2G-601', 'size: bundle of {} bytes, above the {} a slot takes'.format(
                size, limit))
        if self.on_trial:
            return False, V2G_400, 'an update is on trial; it must be confirmed or reverted first', {}
        if self.state_lost:
            raise manifest.UpdateError('V2G-602', 'state: {} and {} are unreadable while update slots '
                                       'exist, so the stored sequence and security counter are '
                                       'unknown; re-provision the controller'.format(STATE_FILE, BACKUP_FILE))
        self._ensure_key()
        self._drop_download()
        slot = self.inactive_slot()
        # the bundle as announced must fit; the manifest's exact need is checked once it is
        # verified, and nothing in the slot is touched before that
        self._check_space(slot, size, 'bundle of {} bytes'.format(size))
        self.dl = _Download(slot, size, bid)
        self.dl.last_ms = now_ms
        return True, None, 'receiving into slot {}'.format(slot), {'slot': slot, 'next': 0}

    def _check_space(self, slot, need, what):
        """Refuse (V2G-601) when `need` bytes plus the margin exceed the free space, counting
        what emptying `slot` would give back. Called before the slot is emptied."""
        sp = fs_space(self.root)
        if sp is None:
            return
        block, free = sp
        free += _tree_bytes(self.slot_dir(slot)) + max(0, _file_size(self.slot_dir(slot) + '.head'))
        need += SPACE_MARGIN_BLOCKS * block
        if need > free:
            raise manifest.UpdateError('V2G-601', 'space: {} needs {} bytes with the margin, {} free '
                                       '(slot {} emptied)'.format(what, need, free, slot))

    def _claim_slot(self, d):
        """The head is verified: now the slot is emptied and the download recorded. A staged
        slot that was never booted is replaced only here, never for a bundle that fails."""
        man = d.man
        sp = fs_space(self.root)
        block = sp[0] if sp is not None else 512
        need = _blocks(d.head_len, block)
        dirs = {''}
        for c in man.components:
            need += _blocks(c.size, block)
            k = c.name.rfind('/')
            while k > 0:
                dirs.add(c.name[:k])
                k = c.name.rfind('/', 0, k)
        need += 2 * block * len(dirs)
        self._check_space(d.slot, need, 'the manifest ({} components)'.format(len(man.components)))
        st = self.st
        if st['pending'] == d.slot:
            st['pending'] = None
            st['trial'] = False
            st['tries'] = 0
        st['slots'].pop(d.slot, None)
        st['dl'] = {'slot': d.slot, 'size': d.size, 'id': _hex(d.id)}
        self._save()
        _rmtree(self.slot_dir(d.slot))
        _rmtree(self.slot_dir(d.slot) + '.head')
        _makedirs(self.slot_dir(d.slot))

    def chunk(self, off, data, now_ms):
        if self.dl is None:
            self._resume_if_needed(now_ms)
        d = self.dl
        if d is None:
            return False, V2G_400, 'fota_chunk: no download in progress (fota_begin first)', {}
        if type(off) is not int or off < 0:
            return False, V2G_400, 'off: must be a byte offset >= 0', {}
        if type(data) is not bytes or not 1 <= len(data) <= MAX_CHUNK:
            return False, V2G_400, 'data: must be 1-{} bytes'.format(MAX_CHUNK), {}
        if d.suspended:
            self._resume_if_needed(now_ms)
            d = self.dl
        d.last_ms = now_ms
        end = off + len(data)
        if end <= d.next:
            return True, None, 'already have it', {'next': d.next}   # a re-sent chunk
        if off > d.next:
            return False, V2G_400, 'off: gap, expected offset {}'.format(d.next), {'next': d.next}
        if end > d.size:
            raise manifest.UpdateError('V2G-601', 'trailing: data past the announced {} bytes'.format(d.size))
        mv = memoryview(data)[d.next - off:]
        if d.man is None:
            mv = self._take_head(d, mv)
        if len(mv):
            self._take_body(d, mv)
        return True, None, 'ok', {'next': d.next}

    def _take_head(self, d, mv):
        if d.head_len == 0:
            need = manifest.HEADER_LEN - len(d.head)
            d.head.extend(mv[:need])
            d.next += min(need, len(mv))
            mv = mv[need:]
            if len(d.head) < manifest.HEADER_LEN:
                return mv
            d.head_len = manifest.HEADER_LEN + manifest.parse_header(d.head)
            if d.head_len > d.size:
                raise manifest.UpdateError('V2G-601', 'truncated: announced size ends inside the COSE_Sign1')
        need = d.head_len - len(d.head)
        d.head.extend(mv[:need])
        d.next += min(need, len(mv))
        mv = mv[need:]
        if len(d.head) == d.head_len:
            self._open_head(d, bytes(d.head))
            self._claim_slot(d)
            storage.write_atomic(self.slot_dir(d.slot) + '.head', d.head)
            d.head = bytearray()
        return mv

    def _ensure_key(self):
        if self.key is None:
            try:
                self.key = load_key(self.root)
            except ValueError as e:
                raise manifest.UpdateError('V2G-601', 'key: {}'.format(e)) from None
            if self.key is None:
                raise manifest.UpdateError('V2G-601', 'key: no update key installed ({})'.format(KEY_FILES[0]))

    def _open_head(self, d, head):
        import hashlib
        self._ensure_key()
        if hashlib.sha256(head).digest()[:16] != d.id:
            raise manifest.UpdateError('V2G-601', 'header: does not match the announced bundle id')
        n = manifest.parse_header(head)
        man = manifest.open_manifest(head[manifest.HEADER_LEN:manifest.HEADER_LEN + n], self.key)
        manifest.check(man, manifest.board_class_id(self.board), self.st['seq'], self.st['sec'],
                       self.slot_size)
        if d.size != len(head) + man.total_size:
            what = 'truncated' if d.size < len(head) + man.total_size else 'trailing'
            raise manifest.UpdateError('V2G-601', '{}: announced {} bytes, the manifest needs {}'.format(
                what, d.size, len(head) + man.total_size))
        d.head_len = len(head)
        d.man = man
        d.body = manifest.BodyCheck(man)

    def _take_body(self, d, mv):
        comps = d.man.components
        while len(mv):
            pos = d.next - d.head_len
            i = d.body.index
            while i < len(comps) and pos >= comps[i].offset + comps[i].size:
                i += 1
            c = comps[i]
            take = c.offset + c.size - pos
            if take > len(mv):
                take = len(mv)
            part = mv[:take]
            d.body.feed(part)       # digest checked when the component's last byte passes
            if d.f_index != i:
                d.close()
                d.f = _create(self.slot_dir(d.slot) + '/' + c.name, 'ab' if pos > c.offset else 'wb', c.name)
                d.f_index = i
            if self.fault == 'write' and d.next + take > d.head_len + d.man.total_size // 2:
                d.f.write(part[:take // 2])   # half a chunk on flash, never acknowledged
                d.close()
                self._freeze()
            d.f.write(part)
            d.f.flush()    # an acknowledged offset is on flash: resume never goes back past it
            d.next += take
            mv = mv[take:]
            if pos + take == c.offset + c.size:
                d.close()
        # zero-size components have no bytes: create their files once everything is in
        if d.next == d.size:
            for c in comps:
                if c.size == 0:
                    _create(self.slot_dir(d.slot) + '/' + c.name, 'wb', c.name).close()

    def finish(self, args, now_ms):
        if self.dl is None:
            self._resume_if_needed(now_ms)
        d = self.dl
        if d is None:
            return False, V2G_400, 'fota_finish: no download in progress', {}
        if d.suspended:
            self._resume_if_needed(now_ms)
            d = self.dl
        tries = args.get('tries', DEFAULT_TRIES)
        trial_s = args.get('trial_s', DEFAULT_TRIAL_MS // 1000)
        if type(tries) is not int or not 1 <= tries <= MAX_TRIES:
            return False, V2G_400, 'tries: must be an integer 1 .. {}'.format(MAX_TRIES), {}
        if type(trial_s) is not int or not 5 <= trial_s <= 600:
            return False, V2G_400, 'trial_s: must be an integer 5 .. 600', {}
        healthy_s = args.get('healthy_s', HEALTHY_MS // 1000)
        if type(healthy_s) is not int or not 1 <= healthy_s < trial_s:
            return False, V2G_400, 'healthy_s: must be an integer 1 .. trial_s - 1', {}
        if d.man is None or d.next < d.size:
            raise manifest.UpdateError('V2G-601', 'truncated: {} of {} bytes received'.format(d.next, d.size))
        d.body.finish()
        d.close()
        man = d.man
        st = self.st
        st['slots'][d.slot] = {'version': man.version, 'seq': man.seq, 'sec': man.security_counter}
        st['pending'] = d.slot
        st['tries'] = tries
        st['trial'] = False
        st['trial_ms'] = trial_s * 1000
        st['healthy_ms'] = healthy_s * 1000
        st['dl'] = None
        self._save_step('state')
        self.dl = None
        _rmtree(self.slot_dir(d.slot) + '.head')
        reboot = args.get('reboot', True) is not False
        if reboot:
            self.reset_at = now_ms
        self._note(now_ms, 'update {} installed in slot {} (sequence {}) over {}: pending its trial'.format(
            man.version, d.slot, man.seq, self.version()))
        return True, None, 'slot {} holds {} (sequence {}), pending a trial boot{}'.format(
            d.slot, man.version, man.seq, '; rebooting' if reboot else ''), {
            'slot': d.slot, 'version': man.version, 'seq': man.seq, 'reboot': reboot}

    def abort(self, why):
        """Drop the download in progress; the running firmware and active slot are untouched.
        A slot is emptied only if a verified head claimed it (st['dl']): before that, a staged
        slot pending its trial is still what it was."""
        self._drop_download()
        info = self.st['dl']
        if info is not None:
            slot = info.get('slot') if isinstance(info, dict) else None
            self.st['dl'] = None
            droppable = slot in SLOTS and slot != self.running and slot != self.st['active']
            try:
                self._save()
            except OSError:
                # a full filesystem (the usual reason to get here): free the slot, then record
                if not droppable:
                    raise
                _rmtree(self.slot_dir(slot))
                _rmtree(self.slot_dir(slot) + '.head')
                self._save()
            if droppable:
                _rmtree(self.slot_dir(slot))
                _rmtree(self.slot_dir(slot) + '.head')
        return True, None, 'download dropped: ' + why, {}

    def confirm(self, now_ms):
        st = self.st
        s = st['pending']
        meta = st['slots'][s]
        meta['confirmed'] = True    # ran healthy once: a fallback if its successor fails to start
        st['active'] = s
        st['failed_start'] = None
        st['seq'] = meta['seq']
        st['sec'] = max(st['sec'], meta['sec'])
        st['pending'] = None
        st['trial'] = False
        st['tries'] = 0
        self._save_step('confirm')
        self._note(now_ms, 'update {} confirmed in slot {} (sequence {})'.format(meta['version'], s, st['seq']))
        return True, None, 'slot {} ({}) confirmed'.format(s, meta['version']), {
            'slot': s, 'version': meta['version'], 'seq': st['seq'], 'sec': st['sec']}

    def _note(self, now_ms, text):
        # the update history in the event log: no error code, the text starts with 'update'
        if self.log is not None:
            self.log.append(now_ms, None, True, text)

    # -- the station's tick hook ----------------------------------------------------------

    def tick(self, now_ms, link_frames):
        """Called by the station each step while `busy`: the trial's health check, a
        requested reset, and the stall timeout of a download."""
        if self.frozen:
            return
        if self.reset_at is not None:
            if not self._energy_flows():   # never reset with the contactor closed
                self.reset_at = None
                self._reset()
            return
        if self.on_trial:
            if link_frames != self.link_frames:
                self.link_frames = link_frames
                self.link_ms = now_ms
            up = ticks.diff(now_ms, self.boot_ms)
            alive = self.link_ms is not None and ticks.diff(now_ms, self.link_ms) <= LINK_ALIVE_MS
            if up >= self.st['healthy_ms'] and alive and link_frames > 0:
                try:
                    self.confirm(now_ms)
                except _Frozen:
                    pass
            elif up > self.st['trial_ms']:
                # failed health check: reset; boot.py counts the try and reverts after the last
                if self.log is not None:
                    self.log.append(now_ms, 'V2G-603', True,
                                    'trial of slot {}: no healthy host link within {} s; resetting'.format(
                                        self.st['pending'], self.st['trial_ms'] // 1000))
                self.reset_at = now_ms
            return
        d = self.dl
        if d is not None and not d.suspended and ticks.diff(now_ms, d.last_ms) > STALL_MS:
            if d.man is None:
                # the head never reached flash: the download starts again from offset 0
                d.head = bytearray()
                d.head_len = 0
                d.next = 0
                d.last_ms = now_ms
                return
            # a stalled stream: release the file and RAM; the next chunk resumes from flash
            d.close()
            d.suspended = True
            d.head = bytearray()
            d.body = None

    def _energy_flows(self):
        return self.ctl is not None and self.ctl.out.contactor

    def _reset(self):
        if self.hal is not None:
            self.hal.reset()   # every board's HAL: outputs safe, then reset
            return
        try:
            import machine
            machine.reset()
        except ImportError:
            pass

    # -- resume ---------------------------------------------------------------------------

    def _drop_download(self):
        if self.dl is not None:
            self.dl.close()
        self.dl = None

    def _resume_if_needed(self, now_ms):
        """Rebuild the download's RAM state from flash: after a reset, or after a stall."""
        d = self.dl
        if d is not None and not d.suspended:
            return
        info = self.st['dl']
        if not isinstance(info, dict):
            return
        slot, size = info.get('slot'), info.get('size')
        try:
            bid = bytes.fromhex(info.get('id'))
        except (TypeError, ValueError):
            bid = b''
        if slot not in SLOTS or type(size) is not int or len(bid) != 16:
            self.st['dl'] = None
            self._save()
            return
        d = _Download(slot, size, bid)
        d.last_ms = now_ms
        self.dl = d
        head = storage.read_bytes(self.slot_dir(slot) + '.head')
        if head is None:
            return   # the head never reached flash: the host starts again from offset 0
        try:
            self._open_head(d, head)
        except manifest.UpdateError:
            self.abort('staged header no longer valid')
            return
        d.next = d.head_len
        buf = bytearray(READ_BLOCK)
        for c in d.man.components:
            if c.size == 0:
                continue   # created at the end; nothing to hash
            name = self.slot_dir(slot) + '/' + c.name
            have = _file_size(name)
            if have < 0:
                break
            if have > c.size:
                have = 0  # cannot be ours: rewritten from its start
            got = 0
            if have:
                with open(name, 'rb') as f:
                    while got < have:
                        n = f.readinto(buf)
                        if not n:
                            break
                        if got + n > have:
                            n = have - got
                        d.body.feed(memoryview(buf)[:n])
                        got += n
            d.next += got
            if got < c.size:
                break


def _hex(b):
    return ''.join('{:02x}'.format(x) for x in b)
