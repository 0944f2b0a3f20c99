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

This module is what every boot needs (the state, the running version, those reports, the
trial's health check, fota_status/report/confirm/abort); the download path - receiving,
COSE/P-256 verification, staging - is app/install.py with core.manifest, core.cose and
core.p256. It is imported on the first command that needs it and dropped again (from
sys.modules, with the key and its tables) once no download is left, so those modules take
RAM only while an update runs.
"""
import gc
import json
import os
import sys

from core import ticks

from app import storage

STATE_FILE = 'update.json'
# A second copy of the state, written after the first by the same atomic path: the stored
# sequence and security counter (anti-rollback) must survive losing either file.
BACKUP_FILE = 'update.json.bak'
SLOTS = ('a', 'b')
KEY_FILES = ('update_key.bin', 'update_key.pem')   # raw 65-byte point, or SPKI PEM
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
# The host-link operations served here (app/station.py dispatches them by this tuple)
OPS = ('fota_begin', 'fota_chunk', 'fota_finish', 'fota_abort', 'fota_confirm', 'fota_status', 'fota_report')


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
                # only staging gets here, with the download path (and core.manifest) loaded
                from core.manifest import UpdateError
                from app.install import _in_the_way
                raise UpdateError('V2G-601', 'creating folder {}: {}'.format(
                    cur, _in_the_way(cur))) from None


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


def default_state():
    return {'v': 1, 'active': 'factory', 'pending': None, 'tries': 0, 'trial': False,
            'trial_ms': DEFAULT_TRIAL_MS, 'healthy_ms': HEALTHY_MS, 'seq': 0, 'sec': 0, 'slots': {}, 'dl': None,
            'reverted': None, 'failed_start': None}


# Two ROMFS partitions (docs/updates.md "Two ROM partitions"): the slots are partitions, the
# factory image and slot a in partition 0, slot b in partition 1; boot.py mounts the chosen
# one at /rom and leaves its number in __main__ (V2G_ROM_PART).
ROM_PART = {'factory': 0, 'a': 0, 'b': 1}
ROM_IMAGE = 'romfs.img'          # the one component of a bundle for a partition


def rom_ab():
    """True on a build with two ROMFS partitions (as boot.rom_ab)."""
    try:
        import vfs
    except ImportError:
        return False
    f = getattr(vfs, 'rom_ioctl', None)     # no ROMFS in this build: slots are folders
    if f is None:
        return False
    n = f(1)
    return type(n) is int and n >= 2


def rom_running_part():
    """The partition boot.py mounted at /rom, or None when it did not say."""
    try:
        import __main__
        k = getattr(__main__, 'V2G_ROM_PART', None)
    except ImportError:
        return None
    return k if k in (0, 1) else None


def rom_size():
    """Bytes of the smaller ROMFS partition: what one image may take."""
    import vfs
    return min(len(vfs.rom_ioctl(2, 0)), len(vfs.rom_ioctl(2, 1)))


def running_slot():
    """The slot boot.py put in front of sys.path, or 'factory'."""
    first = sys.path[0] if sys.path else ''
    for s in SLOTS:
        if first.endswith('slots/' + s):
            return s
    return 'factory'


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
        self.key = None           # the update key (p256.PublicKey) while a download runs
        self.dl = None            # install.Download in progress
        self.refusal = None       # (code, msg) of a head refused between commands
        self._before = None       # sys.modules before the download path was loaded
        self.reset_at = None      # reset requested (after finish, or a failed trial)
        self.link_frames = -1
        self.link_ms = None
        self.state_lost = False
        self.st = self._load_state()
        for k, v in default_state().items():
            if k not in self.st:
                self.st[k] = v
        self.rom = rom_ab()       # slots are ROMFS partitions
        self.rom_part = None      # the partition running now (never erased or written)
        if self.rom:
            self._rom_setup(running)
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

    def _rom_setup(self, running):
        """Slots are partitions: the running one is the one boot.py mounted, named from the
        state as boot.py chose it (a trial's pending slot, else the active one). An image may
        take a whole partition."""
        self.rom_part = rom_running_part()
        self.slot_size = rom_size()
        if running is None:
            st = self.st
            if st['pending'] in SLOTS and st['trial'] and ROM_PART[st['pending']] == self.rom_part:
                self.running = st['pending']
            elif st['active'] in SLOTS and ROM_PART[st['active']] == self.rom_part:
                self.running = st['active']
            elif self.rom_part == 1:
                self.running = 'b'
            else:
                self.running = 'factory'

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
        if self.rom:
            # the partition not mounted at /rom; the factory image is partition 0
            return 'a' if self.rom_part == 1 else 'b'
        r = self.running if self.running in SLOTS else self.st['active']
        return 'b' if r == 'a' else 'a'

    # -- host commands --------------------------------------------------------------------

    def command(self, op, args, now_ms):
        """(ok, code, msg, data) for one of OPS (the station sends no other). Never raises
        for bad input."""
        if op == 'fota_report':   # diagnostics: read only, answered even mid-session
            return True, None, 'update slots', self.report()
        if op not in ('fota_status', 'fota_abort') and self._energy_flows():
            # key load, signature and resume re-hash hold the control step for a while
            return False, V2G_400, '{}: not while the contactor is closed'.format(op), {}
        try:
            if op == 'fota_status':
                d = self.dl
                if self._energy_flows() or not ((d is None or d.suspended) and isinstance(self.st['dl'], dict)):
                    return True, None, 'update status', self.report()
                return self._download_path().run(self, op, args, now_ms)   # resumes the download
            if op == 'fota_chunk' and self.dl is None and self.refusal is not None:
                code, msg = self.refusal    # the head's check failed between two chunks
                self.refusal = None
                return False, code, msg, {}
            if op in ('fota_begin', 'fota_chunk', 'fota_finish'):
                self.refusal = None
                return self._download_path().run(self, op, args, now_ms)
            if op == 'fota_abort':
                return self.abort('aborted by the host')
            # fota_confirm
            if not self.on_trial:
                return False, V2G_400, 'fota_confirm: no update on trial', {}
            return self.confirm(now_ms)
        except OSError:
            # filesystem full or failing: nothing is marked pending; the slot is left as is
            # named by the step, not by str(e): that is a bare errno number on some ports
            self.abort('filesystem error during ' + op)
            return False, 'V2G-601', 'filesystem error during {}: the filesystem refused a write or ' \
                'read (full or failing)'.format(op), {}
        finally:
            if self.dl is None and self.st['dl'] is None:
                self._release()

    def _download_path(self):
        """app/install.py, imported now if it is not. The modules loaded before it are noted:
        what the update brings in after that (install, manifest, cose, p256) is dropped by
        _release."""
        if self._before is None:
            self._before = list(sys.modules)
        __import__('app.install')
        return sys.modules['app.install']

    def _release(self):
        """No download left: drop the download path, the key and its tables. A module goes
        from sys.modules and from its package, so nothing keeps it alive."""
        self.key = None
        if self._before is None:
            return
        for name in [n for n in sys.modules if n not in self._before]:
            if not (name.startswith('core.') or name.startswith('app.')):
                continue
            sys.modules.pop(name, None)
            dot = name.rfind('.')
            pkg = sys.modules.get(name[:dot])
            if pkg is not None:
                try:
                    delattr(pkg, name[dot + 1:])
                except AttributeError:
                    pass
        self._before = None
        gc.collect()

    def report(self):
        """Slots, counters and any download in progress, without side effects (diagnostics)."""
        st = self.st
        out = {'running': self.running, 'version': self.version(), 'active': st['active'],
               'pending': st['pending'], 'trial': self.on_trial, 'tries': st['tries'],
               'seq': st['seq'], 'sec': st['sec']}
        if self.state_lost:
            out['state'] = 'unreadable'
        if self.rom:
            out['rom_part'] = self.rom_part   # the ROMFS partition running now
        fs = st.get('failed_start')
        if isinstance(fs, dict):
            out['failed_start'] = {'slot': fs.get('slot'), 'version': fs.get('version'),
                                   'reason': fs.get('reason')}
        d = self.dl
        if d is not None:
            out['dl'] = {'slot': d.slot, 'size': d.size, 'id': d.id, 'next': d.next,
                         'suspended': d.suspended}
        return out

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
        self._save()
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
                self.confirm(now_ms)
            elif up > self.st['trial_ms']:
                # failed health check: reset; boot.py counts the try and reverts after the last
                if self.log is not None:
                    self.log.append(now_ms, 'V2G-603', True,
                                    'trial of slot {}: no healthy host link within {} s; resetting'.format(
                                        self.st['pending'], self.st['trial_ms'] // 1000))
                self.reset_at = now_ms
            return
        d = self.dl
        if d is not None and d.job is not None:
            # the key load and the head's signature, one bounded slice per step
            self._download_path().step(self, now_ms)
            d = self.dl
            if d is None and self.st['dl'] is None:
                self._release()
                return
        if d is not None and d.rom is not None and d.rom.erasing and not d.suspended:
            # the inactive ROMFS partition, one erase block per step; never with energy flowing
            if not self._energy_flows():
                self._download_path().rom_erase_step(self, now_ms)
                if self.dl is None and self.st['dl'] is None:
                    self._release()
            return
        if d is not None and not d.suspended and ticks.diff(now_ms, d.last_ms) > STALL_MS:
            if d.rom is not None:
                # a partition being written holds no file and no head in RAM: nothing to
                # release, and its hash state cannot be rebuilt past the recorded progress
                return
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

    def _drop_download(self):
        if self.dl is not None:
            self.dl.close()
        self.dl = None
