"""The installer's download path: receive a bundle, verify its signature and manifest, stage
its components in the inactive slot (docs/updates.md).

Only an update needs this, and it is the heavy part (core.manifest, core.cose, core.p256 and
the key's tables): app/update.py imports it on the first fota_begin / fota_chunk /
fota_finish, or on a fota_status that resumes a recorded download, and drops it again when
no download is left. Each function takes the Updater `u`, which owns the state (u.st) and
the download in progress (u.dl); the filesystem helpers stay in app/update.py.
"""
from core import manifest

from app import storage
from app import update as U

MAX_CHUNK = U.MAX_CHUNK


def run(u, op, args, now_ms):
    """(ok, code, msg, data) for a download command; a refusal drops the download."""
    try:
        if op == 'fota_begin':
            return begin(u, args.get('size'), args.get('id'), now_ms)
        if op == 'fota_chunk':
            return chunk(u, args.get('off'), args.get('data'), now_ms)
        if op == 'fota_finish':
            return finish(u, args, now_ms)
        resume_if_needed(u, now_ms)   # fota_status with a download recorded in update.json
        return True, None, 'update status', u.report()
    except manifest.UpdateError as e:
        u.abort(str(e))
        return False, e.code, e.msg, {}


def _in_the_way(path):
    """Why `path` could not be made, in words: ports number their errno values differently
    (the VM's are Emscripten's), so the reason is read from what is there."""
    if U._is_dir(path):
        return 'a folder is in the way'
    if storage.exists(path):
        return 'a file is in the way'
    return 'the filesystem refused it (full or failing)'


def _create(name, mode, what):
    """open(name, mode) for staging component `what`; a refusal names the file and why."""
    try:
        U._makedirs(name[:name.rfind('/')])
        return open(name, mode)
    except manifest.UpdateError as e:
        raise manifest.UpdateError(e.code, 'staging {}: {}'.format(what, e.msg)) from None
    except OSError:
        raise manifest.UpdateError('V2G-601', 'staging {}: opening {} for writing: {}'.format(
            what, name, _in_the_way(name))) from None


def _blocks(n, block):
    return (n + block - 1) // block * block


def read_key_point(root=''):
    """The trusted update key's 65-byte point, or None when none is installed. ValueError
    names what is wrong with a key file."""
    from core import p256
    raw = storage.read_bytes(root + U.KEY_FILES[0])
    if raw is None:
        pem = storage.read_bytes(root + U.KEY_FILES[1])
        if pem is None:
            return None
        import binascii
        lines = [ln.strip() for ln in pem.split(b'\n')]
        der = binascii.a2b_base64(b''.join(ln for ln in lines if ln and not ln.startswith(b'-----')))
        if der[:len(p256.SPKI_PREFIX)] != p256.SPKI_PREFIX:
            raise ValueError('update key: not a P-256 public key')
        raw = der[len(p256.SPKI_PREFIX):]
    p256.parse_point(raw)
    return raw


def load_key(root=''):
    """The trusted update key (p256.PublicKey), or None when none is installed."""
    from core import p256
    raw = read_key_point(root)
    return None if raw is None else p256.PublicKey(raw)


class Download:
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
        self.job = None          # the key load and head check, one slice per control step
        self.slice_ops = 0       # point operations of the job's last slice
        self.kid = None          # the update key's id, known before its table is built
        self.checked = None      # (payload, digest, signature) of a head that passed the cheap checks
        self.hold = False        # chunks past the head are held (not refused) while it is checked
        self.rom = None          # RomWrite when the slot is a ROMFS partition

    def close(self):
        if self.f is not None:
            self.f.close()
            self.f = None
            self.f_index = -1


def begin(u, size, bid, now_ms):
    if type(size) is not int or size < manifest.HEADER_LEN + 1:
        return False, U.V2G_400, 'size: must be the bundle length in bytes', {}
    if type(bid) is not bytes or len(bid) != 16:
        return False, U.V2G_400, 'id: must be the first 16 bytes of sha256(header + COSE_Sign1)', {}
    limit = manifest.HEADER_LEN + manifest.cose.MAX_COSE_LEN + u.slot_size
    if size > limit:
        raise manifest.UpdateError('V2G-601', 'size: bundle of {} bytes, above the {} a slot takes'.format(
            size, limit))
    if u.on_trial:
        return False, U.V2G_400, 'an update is on trial; it must be confirmed or reverted first', {}
    if u.state_lost:
        raise manifest.UpdateError('V2G-602', 'state: {} and {} are unreadable while update slots '
                                   'exist, so the stored sequence and security counter are '
                                   'unknown; re-provision the controller'.format(U.STATE_FILE, U.BACKUP_FILE))
    point = None
    if u.key is None:
        point = _key_point(u)
    u._drop_download()
    if u.rom:
        _rom_ready(u)
    slot = u.inactive_slot()
    # the bundle as announced must fit; the manifest's exact need is checked once it is
    # verified, and nothing in the slot is touched before that
    _check_space(u, slot, size if not u.rom else 0, 'bundle of {} bytes'.format(size))
    u.dl = Download(slot, size, bid)
    u.dl.last_ms = now_ms
    u.dl.kid = u.key.kid if u.key is not None else p256_key_id(point)
    u.dl.job = _head_job(u, u.dl, point)
    return True, None, 'receiving into slot {}'.format(slot), {'slot': slot, 'next': 0}


def p256_key_id(point):
    from core import p256
    return p256.key_id(point)


def _check_space(u, slot, need, what):
    """Refuse (V2G-601) when `need` bytes plus the margin exceed the free space, counting
    what emptying `slot` would give back. Called before the slot is emptied."""
    sp = U.fs_space(u.root)
    if sp is None:
        return
    block, free = sp
    free += U._tree_bytes(u.slot_dir(slot)) + max(0, U._file_size(u.slot_dir(slot) + '.head'))
    need += U.SPACE_MARGIN_BLOCKS * block
    if need > free:
        raise manifest.UpdateError('V2G-601', 'space: {} needs {} bytes with the margin, {} free '
                                   '(slot {} emptied)'.format(what, need, free, slot))


def _claim_slot(u, d):
    """The head is verified: now the slot is emptied and the download recorded. A staged
    slot that was never booted is replaced only here, never for a bundle that fails."""
    man = d.man
    sp = U.fs_space(u.root)
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
    _check_space(u, d.slot, need, 'the manifest ({} components)'.format(len(man.components)))
    st = u.st
    if st['pending'] == d.slot:
        st['pending'] = None
        st['trial'] = False
        st['tries'] = 0
    st['slots'].pop(d.slot, None)
    st['dl'] = {'slot': d.slot, 'size': d.size, 'id': _hex(d.id)}
    u._save()
    U._rmtree(u.slot_dir(d.slot))
    U._rmtree(u.slot_dir(d.slot) + '.head')
    U._makedirs(u.slot_dir(d.slot))


def chunk(u, off, data, now_ms):
    if u.dl is None:
        resume_if_needed(u, now_ms)
    d = u.dl
    if d is None:
        return False, U.V2G_400, 'fota_chunk: no download in progress (fota_begin first)', {}
    if type(off) is not int or off < 0:
        return False, U.V2G_400, 'off: must be a byte offset >= 0', {}
    if type(data) is not bytes or not 1 <= len(data) <= MAX_CHUNK:
        return False, U.V2G_400, 'data: must be 1-{} bytes'.format(MAX_CHUNK), {}
    if d.suspended:
        resume_if_needed(u, now_ms)
        d = u.dl
    d.last_ms = now_ms
    end = off + len(data)
    if end <= d.next:
        return True, None, 'already have it', {'next': d.next}   # a re-sent chunk
    if d.rom is not None and d.rom.erasing:
        # the inactive partition is being erased, a block per control step: held like the
        # head's check, the host asks again from `next`
        return True, None, 'erasing ROMFS partition {}: resend from offset {}'.format(
            d.rom.part, d.next), {'next': d.next}
    if d.hold:
        # the head is complete and being checked between control steps: nothing past it
        # is taken before its signature holds. Answered as held, not refused: a refusal
        # would go to the event log (and flash) once per chunk the host has in flight.
        # After the check the host's chunks still in flight are held the same way, until
        # it sends from `next` again.
        if d.job is not None:
            return True, None, 'verifying the bundle signature: resend from offset {}'.format(
                d.next), {'next': d.next}
        if off > d.next:
            return True, None, 'the bundle signature holds: resend from offset {}'.format(
                d.next), {'next': d.next}
        d.hold = False
    if off > d.next:
        return False, U.V2G_400, 'off: gap, expected offset {}'.format(d.next), {'next': d.next}
    if end > d.size:
        raise manifest.UpdateError('V2G-601', 'trailing: data past the announced {} bytes'.format(d.size))
    mv = memoryview(data)[d.next - off:]
    if d.man is None:
        mv = _take_head(u, d, mv)
    if len(mv) and d.man is not None:   # body bytes wait for the head's check: sent again
        _take_body(u, d, mv)
    return True, None, 'ok', {'next': d.next}


def _take_head(u, d, mv):
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
        if d.job is None:
            _open_head(u, d, bytes(d.head))
            _head_verified(u, d)
        else:
            # structure, alg and kid now (cheap: a bad head is refused by this chunk's
            # answer); the signature's arithmetic in the job's slices
            d.checked = _check_head(d, bytes(d.head))
            d.hold = True
    return mv


def _head_verified(u, d):
    _rom_check_shape(u, d.man)
    if u.rom:
        _claim_rom(u, d)
    else:
        _claim_slot(u, d)
    storage.write_atomic(u.slot_dir(d.slot) + '.head', d.head)
    d.head = bytearray()


def _key_point(u):
    try:
        point = read_key_point(u.root)
    except ValueError as e:
        raise manifest.UpdateError('V2G-601', 'key: {}'.format(e)) from None
    if point is None:
        raise manifest.UpdateError('V2G-601', 'key: no update key installed ({})'.format(U.KEY_FILES[0]))
    return point


def _ensure_key(u):
    if u.key is None:
        from core import p256
        u.key = p256.PublicKey(_key_point(u))


def _head_job(u, d, point):
    """The key's table (when not loaded yet) while the head arrives, then the head's check:
    a generator that step() advances by one slice of at most p256.SLICE_OPS point
    operations per control step, so the station's control and protection keep their period
    while an update starts. Generators are nested at most four deep (job, table, batch, inverse):
    each level resumed costs C stack."""
    from core import p256
    if u.key is None:
        x, y = p256.parse_point(point)
        tab = []
        yield from p256.comb_table_steps(x, y, tab)
        u.key = p256.PublicKey(point, tab[0])
    while d.checked is None:
        yield 0     # waiting for the head's chunks
    payload, digest, sig = d.checked
    ok = []
    yield from u.key.verify_steps(digest, sig, ok)
    _accept_head(u, d, bytes(d.head), payload, ok[0])
    yield 0     # then the flash writes of claiming the slot, in their own step
    _head_verified(u, d)


def step(u, now_ms):
    """One slice of the download's job (called by the station's step through Updater.tick);
    d.slice_ops is the work it did. A refusal drops the download; the next fota_chunk
    answers with it."""
    d = u.dl
    if d is None or d.job is None:
        return
    if d.head_len and len(d.head) == d.head_len:
        d.last_ms = now_ms      # checking what arrived: not a stall
    try:
        d.slice_ops = next(d.job)
        return
    except StopIteration:
        d.job = None
        return
    except manifest.UpdateError as e:
        code, msg = e.code, e.msg
    except OSError:
        code, msg = 'V2G-601', 'filesystem error while staging the verified head: the filesystem ' \
            'refused a write or read (full or failing)'
    d.job = None
    u.refusal = (code, msg)
    if u.log is not None:
        u.log.append(now_ms, code, True, 'refused fota_chunk: ' + msg)
    u.abort(msg)


def _open_head(u, d, head):
    """The head's check in one go (a download resumed from flash)."""
    _ensure_key(u)
    d.kid = u.key.kid
    payload, digest, sig = _check_head(d, head)
    _accept_head(u, d, head, payload, u.key.verify_digest(digest, sig))


def _check_head(d, head):
    import hashlib
    if hashlib.sha256(head).digest()[:16] != d.id:
        raise manifest.UpdateError('V2G-601', 'header: does not match the announced bundle id')
    n = manifest.parse_header(head)
    try:
        return manifest.cose.check_sign1(head[manifest.HEADER_LEN:manifest.HEADER_LEN + n], d.kid)
    except manifest.cose.CoseError as e:
        raise manifest.UpdateError('V2G-601', str(e)) from None


def _accept_head(u, d, head, payload, verified):
    if not verified:
        try:
            manifest.cose.signature_failed(u.key)
        except manifest.cose.CoseError as e:
            raise manifest.UpdateError('V2G-601', str(e)) from None
    man = manifest.decode(payload)
    manifest.check(man, manifest.board_class_id(u.board), u.st['seq'], u.st['sec'], u.slot_size)
    if d.size != len(head) + man.total_size:
        what = 'truncated' if d.size < len(head) + man.total_size else 'trailing'
        raise manifest.UpdateError('V2G-601', '{}: announced {} bytes, the manifest needs {}'.format(
            what, d.size, len(head) + man.total_size))
    d.head_len = len(head)
    d.man = man
    d.body = manifest.BodyCheck(man)


def _take_body(u, d, mv):
    if d.rom is not None:
        _rom_take(u, d, mv)
        return
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
            d.f = _create(u.slot_dir(d.slot) + '/' + c.name, 'ab' if pos > c.offset else 'wb', c.name)
            d.f_index = i
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
                _create(u.slot_dir(d.slot) + '/' + c.name, 'wb', c.name).close()


def finish(u, args, now_ms):
    if u.dl is None:
        resume_if_needed(u, now_ms)
    d = u.dl
    if d is None:
        return False, U.V2G_400, 'fota_finish: no download in progress', {}
    if d.suspended:
        resume_if_needed(u, now_ms)
        d = u.dl
    tries = args.get('tries', U.DEFAULT_TRIES)
    trial_s = args.get('trial_s', U.DEFAULT_TRIAL_MS // 1000)
    if type(tries) is not int or not 1 <= tries <= U.MAX_TRIES:
        return False, U.V2G_400, 'tries: must be an integer 1 .. {}'.format(U.MAX_TRIES), {}
    if type(trial_s) is not int or not 5 <= trial_s <= 600:
        return False, U.V2G_400, 'trial_s: must be an integer 5 .. 600', {}
    healthy_s = args.get('healthy_s', U.HEALTHY_MS // 1000)
    if type(healthy_s) is not int or not 1 <= healthy_s < trial_s:
        return False, U.V2G_400, 'healthy_s: must be an integer 1 .. trial_s - 1', {}
    if d.man is None or d.next < d.size:
        raise manifest.UpdateError('V2G-601', 'truncated: {} of {} bytes received'.format(d.next, d.size))
    d.body.finish()
    d.close()
    if d.rom is not None:
        _rom_verify(u, d)
    man = d.man
    st = u.st
    st['slots'][d.slot] = {'version': man.version, 'seq': man.seq, 'sec': man.security_counter}
    st['pending'] = d.slot
    st['tries'] = tries
    st['trial'] = False
    st['trial_ms'] = trial_s * 1000
    st['healthy_ms'] = healthy_s * 1000
    st['dl'] = None
    u._save()
    u.dl = None
    U._rmtree(u.slot_dir(d.slot) + '.head')
    reboot = args.get('reboot', True) is not False
    if reboot:
        u.reset_at = now_ms
    u._note(now_ms, 'update {} installed in slot {} (sequence {}) over {}: pending its trial'.format(
        man.version, d.slot, man.seq, u.version()))
    return True, None, 'slot {} holds {} (sequence {}), pending a trial boot{}'.format(
        d.slot, man.version, man.seq, '; rebooting' if reboot else ''), {
        'slot': d.slot, 'version': man.version, 'seq': man.seq, 'reboot': reboot}


def resume_if_needed(u, now_ms):
    """Rebuild the download's RAM state from flash: after a reset, or after a stall."""
    d = u.dl
    if d is not None and not d.suspended:
        return
    info = u.st['dl']
    if not isinstance(info, dict):
        return
    slot, size = info.get('slot'), info.get('size')
    try:
        bid = bytes.fromhex(info.get('id'))
    except (TypeError, ValueError):
        bid = b''
    if slot not in U.SLOTS or type(size) is not int or len(bid) != 16:
        u.st['dl'] = None
        u._save()
        return
    d = Download(slot, size, bid)
    d.last_ms = now_ms
    u.dl = d
    head = storage.read_bytes(u.slot_dir(slot) + '.head')
    if head is None:
        return   # the head never reached flash: the host starts again from offset 0
    try:
        _open_head(u, d, head)
    except manifest.UpdateError:
        u.abort('staged header no longer valid')
        return
    d.next = d.head_len
    if u.rom:
        _rom_resume(u, d, info)
        return
    buf = bytearray(U.READ_BLOCK)
    for c in d.man.components:
        if c.size == 0:
            continue   # created at the end; nothing to hash
        name = u.slot_dir(slot) + '/' + c.name
        have = U._file_size(name)
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


# -- a slot that is a ROMFS partition (docs/updates.md, "Two ROM partitions") -------------------
# The bundle holds one component, romfs.img. Once the head is verified the partition not
# mounted at /rom is erased a block per control step (vfs.rom_ioctl(3)), then each chunk is
# written where it belongs (vfs.rom_ioctl(4)), hashed on the way; the progress is recorded in
# update.json every ROM_RECORD bytes so a reset resumes from there, re-hashing what is in the
# partition through its memory-mapped view. fota_finish reads the whole image back and mounts
# it at a scratch point before `pending` is written. The running partition is never touched:
# its modules run in place.

ROM_RECORD = 8192            # bytes written between two records of the progress
ROM_SCRATCH = '/v2g_romchk'  # where fota_finish test-mounts the new image


class RomWrite:
    """The partition being written: RAM is a write unit's carry and a few integers."""

    def __init__(self, part, image_size, block, erased, wrote):
        self.part = part
        self.block = block
        self.erase_end = (image_size + block - 1) // block * block
        self.erased = erased      # bytes erased from the partition's start
        self.wrote = wrote        # image bytes on flash (a whole number of write units)
        self.recorded = wrote
        self.unit = 4             # the write unit; the erase answers the port's own
        self.carry = bytearray(16)
        self.nc = 0               # bytes waiting in carry for a whole unit

    @property
    def erasing(self):
        return self.erased < self.erase_end


def _vfs():
    import vfs
    return vfs


def _rom_fail(what, r):
    raise manifest.UpdateError('V2G-601', 'romfs: {} failed (error {})'.format(what, r))


def _rom_ready(u):
    """The partition running now must be known before either is written."""
    if u.rom_part is None:
        raise manifest.UpdateError('V2G-601', 'romfs: boot.py did not say which ROMFS partition '
                                   'runs (V2G_ROM_PART); neither is written')


def _rom_check_shape(u, man):
    """A bundle for a partition is one component, romfs.img; a board with slot folders
    cannot run one. Checked once the head is verified, before anything is written."""
    names = [c.name for c in man.components]
    if not u.rom:
        if U.ROM_IMAGE in names:
            raise manifest.UpdateError('V2G-601', 'romfs: this controller has no second ROMFS '
                                       'partition for {}'.format(U.ROM_IMAGE))
        return
    if names != [U.ROM_IMAGE]:
        raise manifest.UpdateError('V2G-601', 'romfs: a bundle for this controller holds one '
                                   'component, {} (not {})'.format(U.ROM_IMAGE, ', '.join(names)[:60]))
    if man.components[0].size > u.slot_size:
        raise manifest.UpdateError('V2G-601', 'size: {} of {} bytes, above the {} of a ROMFS '
                                   'partition'.format(U.ROM_IMAGE, man.components[0].size, u.slot_size))


def _rom_target(u, slot):
    k = U.ROM_PART[slot]
    if u.rom_part is None or k == u.rom_part:
        # never the partition the running modules execute from
        raise manifest.UpdateError('V2G-601', 'romfs: partition {} is the running one'.format(k))
    return k


def _claim_rom(u, d):
    """The head is verified: record the download, then the erase starts (Updater.tick)."""
    k = _rom_target(u, d.slot)
    block = _vfs().rom_ioctl(6, k)
    if type(block) is not int or block <= 0:
        block = 4096
    st = u.st
    if st['pending'] == d.slot:
        st['pending'] = None
        st['trial'] = False
        st['tries'] = 0
    st['slots'].pop(d.slot, None)
    st['dl'] = {'slot': d.slot, 'size': d.size, 'id': _hex(d.id), 'rom': [k, 0, 0]}
    u._save()
    U._rmtree(u.slot_dir(d.slot) + '.head')
    U._makedirs(u.path('slots'))
    d.rom = RomWrite(k, d.man.components[0].size, block, 0, 0)


def _rom_record(u, d):
    r = d.rom
    u.st['dl']['rom'] = [r.part, r.erased, r.wrote]
    u._save()
    r.recorded = r.wrote


def rom_erase_step(u, now_ms):
    """One erase block of the partition being written (Updater.tick, one per control step):
    an erase stops the CPU in the flash driver for tens of ms. A refusal drops the download."""
    d = u.dl
    r = d.rom
    d.last_ms = now_ms      # erasing is progress, not a stall
    try:
        k = _rom_target(u, d.slot)
        got = _vfs().rom_ioctl(3, k, r.erased, r.block)
        if type(got) is not int or got < 0:
            _rom_fail('erasing partition {} at {}'.format(k, r.erased), got)
        if got > r.unit and got <= len(r.carry):
            r.unit = got
        r.erased += r.block
        if not r.erasing or r.erased % (8 * r.block) == 0:
            _rom_record(u, d)
    except manifest.UpdateError as e:
        code, msg = e.code, e.msg
    except OSError:
        code, msg = 'V2G-601', 'filesystem error while erasing: the state could not be recorded'
    else:
        return
    u.refusal = (code, msg)
    if u.log is not None:
        u.log.append(now_ms, code, True, 'refused fota_chunk: ' + msg)
    u.abort(msg)


def _rom_write(r, off, data):
    got = _vfs().rom_ioctl(4, r.part, off, data)
    if type(got) is int and got < 0:
        _rom_fail('writing partition {} at {}'.format(r.part, off), got)


def _rom_take(u, d, mv):
    """Body bytes: hashed, then written in whole write units; the bytes of a last unit wait
    in carry for the next chunk (or are padded with 0xFF at the image's end)."""
    r = d.rom
    d.body.feed(mv)         # digest checked when the image's last byte passes
    d.next += len(mv)
    unit = r.unit
    if r.nc:
        take = min(unit - r.nc, len(mv))
        r.carry[r.nc:r.nc + take] = mv[:take]
        r.nc += take
        mv = mv[take:]
        if r.nc == unit:
            _rom_write(r, r.wrote, memoryview(r.carry)[:unit])
            r.wrote += unit
            r.nc = 0
    whole = len(mv) // unit * unit
    if whole:
        _rom_write(r, r.wrote, mv[:whole])
        r.wrote += whole
    rest = len(mv) - whole
    if rest:
        r.carry[:rest] = mv[whole:]
        r.nc = rest
    if d.next == d.size and r.nc:
        for i in range(r.nc, unit):
            r.carry[i] = 0xFF    # erased flash stays as it is
        _rom_write(r, r.wrote, memoryview(r.carry)[:unit])
        r.wrote += r.nc
        r.nc = 0
    if r.wrote - r.recorded >= ROM_RECORD or d.next == d.size:
        _rom_record(u, d)


def _rom_resume(u, d, info):
    """After a reset or a stall: erase on from what was recorded, or re-hash the image bytes
    recorded as written from the partition's memory-mapped view (nothing copied to RAM)."""
    rec = info.get('rom')
    if not (isinstance(rec, list) and len(rec) == 3 and all(type(x) is int for x in rec)):
        u.abort('romfs: the recorded progress is unreadable')
        return
    k, erased, wrote = rec
    if k != U.ROM_PART.get(d.slot) or k == u.rom_part:
        u.abort('romfs: the recorded partition is not the inactive one')
        return
    block = _vfs().rom_ioctl(6, k)
    if type(block) is not int or block <= 0:
        block = 4096
    size = d.man.components[0].size
    erased = erased // block * block
    r = d.rom = RomWrite(k, size, block, erased, 0)
    if r.erasing or wrote < 0:
        r.erased = min(erased, r.erase_end)
        return      # Updater.tick erases on; the host's chunks are held until then
    wrote = min(wrote, size)
    part = _vfs().rom_ioctl(2, k)
    pos = 0
    while pos < wrote:
        n = min(U.READ_BLOCK, wrote - pos)
        d.body.feed(part[pos:pos + n])
        pos += n
    r.wrote = r.recorded = wrote
    d.next = d.head_len + wrote


def _rom_verify(u, d):
    """fota_finish: the whole image read back from the partition hashes to the manifest's
    SHA-256 and mounts as a VfsRom; only then may `pending` name it."""
    import hashlib
    r = d.rom
    c = d.man.components[0]
    vfs = _vfs()
    vfs.rom_ioctl(5, r.part)       # end of the write (not every port needs it)
    part = vfs.rom_ioctl(2, r.part)
    h = hashlib.sha256()
    pos = 0
    while pos < c.size:
        n = min(4096, c.size - pos)
        h.update(part[pos:pos + n])
        pos += n
    if h.digest() != c.sha256:
        raise manifest.UpdateError('V2G-601', 'digest: ROMFS partition {} does not read back as '
                                   '{}'.format(r.part, U.ROM_IMAGE))
    try:
        vfs.mount(vfs.VfsRom(part), ROM_SCRATCH)
        vfs.umount(ROM_SCRATCH)
    except OSError as e:
        raise manifest.UpdateError('V2G-601', 'romfs: partition {} does not mount ({})'.format(
            r.part, e)) from None
