"""The installer's download path: receive a bundle, verify its signature and manifest, stage
its components in the inactive slot (docs/updates.md).

Only an update needs this, and it is the heavy part (core.manifest, core.cose, core.p256 and
the key's tables): app/update.py imports it on the first fota_begin / fota_chunk /
fota_finish, or on a fota_status that resumes a recorded download, and drops it again when
no download is left. Each function takes the Updater `u`, which owns the state (u.st) and
the download in progress (u.dl); the filesystem helpers stay in app/update.py.
"""
import os

from core import manifest

from app import storage
from app import update as U

MAX_CHUNK = U.MAX_CHUNK
# The update key's comb tables, two per base, kept between updates (24 KiB): building them
# takes about 360 control steps, reading them three; only the key's first is then held in
# RAM, the second two are read from the file entry by entry. Sealed by a digest over the key's point
# (core/p256.py): a damaged or foreign file is rebuilt and rewritten, never used. Where the
# filesystem has no room for it beside the bundle, the key gets one table per base, built at
# every update (128 steps) as before, and a verify does twice the doublings.
KEY_TABLE_FILE = 'update_key.tab'
TABLE_WRITE = 4096      # bytes of the cache written per control step
TABLE_READ = 1024       # the buffer the kept second tables are checked through


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


def _write_sums(path, comps):
    """The slot's file list for boot.py's check at every boot (boot.damage): sha256, size and
    name of each component, a line each. Written before the slot is marked pending: a cut
    here leaves a slot that never runs."""
    import binascii
    try:
        with open(path, 'w') as f:
            for c in comps:
                f.write('{} {} {}\n'.format(binascii.hexlify(c.sha256).decode(), c.size, c.name))
    except OSError:
        raise manifest.UpdateError('V2G-601', 'writing the file list {}: {}'.format(
            path, _in_the_way(path))) from None


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
        _rom().ready(u)
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
    if u.rom:
        _rom().claim(u, d)
    else:
        if U.ROM_IMAGE in [c.name for c in d.man.components]:
            raise manifest.UpdateError('V2G-601', 'romfs: this controller has no second ROMFS '
                                       'partition for {}'.format(U.ROM_IMAGE))
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
        p256.run(_head_job(u, None, _key_point(u)))


def _room_for_tables(u):
    """True when KEY_TABLE_FILE fits beside the bundle being received and the margin."""
    from core import p256
    sp = U.fs_space(u.root)
    if sp is None:
        return True     # no statvfs: a write that fails is removed again
    block, free = sp
    old = U._file_size(u.root + KEY_TABLE_FILE)
    need = u.dl.size if u.dl is not None else 0
    if free + max(0, old) >= p256.CACHE_LEN + need + (U.SPACE_MARGIN_BLOCKS + 1) * block:
        return True
    if old >= 0:
        try:
            os.remove(u.root + KEY_TABLE_FILE)   # not this key's tables: only in the way
        except OSError:
            pass
    return False


def _cached_table(u, point, out):
    """Append the key's tables from KEY_TABLE_FILE to out when it holds them whole for
    this key; nothing when it is missing, damaged or another key's. A generator: one table
    per slice. The key's first table is read into RAM (8 KiB); the key's second and G's
    second stay in the file, checked here through a TABLE_READ buffer and read entry by
    entry when a verify looks them up (p256.FileTable): 16 KiB less while an update runs."""
    from core import p256
    path = u.root + KEY_TABLE_FILE
    if U._file_size(path) != p256.CACHE_LEN:
        return
    h = p256.cache_digest(point)
    first = bytearray(p256.TABLE_LEN)
    try:
        with open(path, 'rb') as f:
            head = f.read(p256.CACHE_HEAD_LEN)
            yield 0
            if not _fill(f, memoryview(first)):
                return
            h.update(first)
            buf = bytearray(TABLE_READ)
            mv = memoryview(buf)
            for _ in range(1, p256.CACHE_TABLES):
                yield 0
                for _ in range(p256.TABLE_LEN // TABLE_READ):
                    if not _fill(f, mv):
                        return
                    h.update(buf)
    except OSError:
        return
    if bytes(head) == p256.CACHE_MAGIC + h.digest():
        out.append([first] + [p256.FileTable(path, p256.cache_table_offset(i))
                              for i in range(1, p256.CACHE_TABLES)])


def _fill(f, mv):
    """Read f into all of mv; False when the file ends first."""
    n = 0
    while n < len(mv):
        got = f.readinto(mv[n:])
        if not got:
            return False
        n += got
    return True


def _save_table(u, point, tabs):
    """Write the key's tables to KEY_TABLE_FILE, TABLE_WRITE bytes per slice. A file that
    cannot be written (full or failing) costs only a rebuild at the next update; one cut
    short by a reset fails its digest."""
    from core import p256
    path = u.root + KEY_TABLE_FILE
    try:
        with open(path, 'wb') as f:
            f.write(p256.cache_head(point, tabs))
            for t in tabs:
                mv = memoryview(t)
                for i in range(0, len(mv), TABLE_WRITE):
                    yield 0
                    f.write(mv[i:i + TABLE_WRITE])
    except OSError:
        try:
            os.remove(path)     # a part written must not take the bundle's space
        except OSError:
            pass


def _head_job(u, d, point):
    """The key's tables (when not loaded yet) while the head arrives, then the head's check:
    a generator that step() advances by one slice of at most p256.SLICE_OPS point
    operations per control step, so the station's control and protection keep their period
    while an update starts. Generators are nested at most four deep (job, table, batch, inverse):
    each level resumed costs C stack. With d None: the key alone (_ensure_key).

    The tables come from KEY_TABLE_FILE when it holds them for this key; else two per base
    are built and kept there when the filesystem has room for them, one per base otherwise
    (p256.key_tables_steps written out here: one generator level less)."""
    if u.key is None:
        from core import p256
        out = []
        yield from _cached_table(u, point, out)
        if not out:
            keep = _room_for_tables(u)
            x, y = p256.parse_point(point)
            yield from p256.comb_table_steps(x, y, out, 2 if keep else 1)
            if keep:
                yield from p256.comb_table_steps(p256.GX, p256.GY, out, 2, 1)
                out[0].append(out[1][0])
                yield from _save_table(u, point, out[0])
        u.key = p256.PublicKey(point, out[0])
    if d is None:
        return
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
    except MemoryError:
        # the board's heap ran out in the check (e.g. a key's tables built on a small heap):
        # a refusal that releases the download, never an exception out of the control step
        code, msg = 'V2G-601', 'not enough RAM to check the update on this board; nothing installed'
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
        _rom().take(u, d, mv)
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
        _rom().verify(u, d)
    else:
        _write_sums(u.slot_dir(d.slot) + '.sums', d.man.components)
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
        _rom().resume(u, d, info)
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



def _rom():
    """app/install_rom.py: the download path for a slot that is a ROMFS partition. Only a
    board with two partitions carries it (v2g flash leaves it off the others)."""
    from app import install_rom
    return install_rom


def rom_erase_step(u, now_ms):
    _rom().erase_step(u, now_ms)
