"""The installer's download path for a slot that is a ROMFS partition (docs/updates.md, "Two
ROM partitions"). app/install.py hands over to it on a build with two partitions; only such a
board carries this module (v2g flash leaves it off the others).

The bundle holds one component, romfs.img. Once the head is verified the partition not
mounted at /rom is erased a block per control step (vfs.rom_ioctl(3)), then each chunk is
written where it belongs (vfs.rom_ioctl(4)), hashed on the way; the progress is recorded in
update.json every ROM_RECORD bytes so a reset resumes from there, re-hashing what is in the
partition through its memory-mapped view. fota_finish reads the whole image back and mounts
it at a scratch point before `pending` is written. The running partition is never touched:
its modules run in place.
"""
from core import manifest

from app import update as U
from app.install import _hex

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


def ready(u):
    """The partition running now must be known before either is written."""
    if u.rom_part is None:
        raise manifest.UpdateError('V2G-601', 'romfs: boot.py did not say which ROMFS partition '
                                   'runs (V2G_ROM_PART); neither is written')


def check_shape(u, man):
    """A bundle for a partition is one component, romfs.img, no larger than a partition.
    Checked once the head is verified, before anything is written."""
    names = [c.name for c in man.components]
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


def claim(u, d):
    """The head is verified: record the download, then the erase starts (Updater.tick)."""
    check_shape(u, d.man)
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


def erase_step(u, now_ms):
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


def take(u, d, mv):
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


def resume(u, d, info):
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


def verify(u, d):
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
