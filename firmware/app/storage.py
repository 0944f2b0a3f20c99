"""Everything the controller keeps across a reset goes through here.

Writes go to NAME.tmp first, then a rename puts the new content in place, so a reset
mid-write leaves the old file and a torn .tmp (ignored, and overwritten by the next write).
On littlefs (the boards' filesystem) the rename replaces NAME atomically. MicroPython's FAT
driver cannot rename onto an existing file: it removes NAME, then renames, and a reset
between the two leaves no NAME, only a complete NAME.tmp. read_json recovers that case:
with NAME missing it takes NAME.tmp if it parses (a torn one does not) and renames it into
place. Raw files (read_bytes) are not recovered: nothing tells a torn .tmp from a whole one.

The station's own state (state/*.json) is kept as two sealed copies, NAME and NAME.bak
(write_copies/read_copies): each ends in a check line with a sequence number, the body's
length and a CRC-32 over both, so an emptied, cut, garbled or edited copy is told from a
whole one, and a whole .tmp can be taken as safely as the file itself.
"""
import json
import os

from core.crc32 import crc32

STATE_DIR = 'state'


def exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def ensure_dir(path):
    if not exists(path):
        os.mkdir(path)


def write_atomic(path, data):
    tmp = path + '.tmp'
    with open(tmp, 'wb') as f:
        f.write(data)
    try:
        os.rename(tmp, path)    # littlefs, and MicroPython's FAT driver: replaces NAME
    except OSError:
        # a rename that refuses an existing target: remove, then rename (the window between
        # the two is what read_json recovers); any other failure stands
        if not exists(path) or not exists(tmp):
            raise
        os.remove(path)
        os.rename(tmp, path)


def read_bytes(path, default=None):
    try:
        with open(path, 'rb') as f:
            return f.read()
    except OSError:
        return default


def read_json(path, default=None):
    """The file's JSON, or `default` when it is missing or unreadable (never raises).
    NAME missing beside a NAME.tmp that parses: a replace cut between its remove and its
    rename; the .tmp is the new content and is renamed into place."""
    raw = read_bytes(path)
    recovered = False
    if raw is None:
        raw = read_bytes(path + '.tmp')
        if raw is None:
            return default
        recovered = True
    try:
        obj = json.loads(raw)
    except ValueError:
        return default
    if recovered:
        try:
            os.rename(path + '.tmp', path)
        except OSError:
            pass    # read-only or full: the content is still good for this read
    return obj


def write_json(path, obj):
    write_atomic(path, json.dumps(obj).encode())


def state_path(name):
    ensure_dir(STATE_DIR)
    return STATE_DIR + '/' + name


# A file kept only to be deleted: when the filesystem is full, removing it gives the
# controller's safety state (the weld latch, the fallback) room for its write.
RESERVE = 'reserve.bin'
RESERVE_BYTES = 2048


def keep_reserve():
    """Make the reserve file if it is missing; False when there is no room for it."""
    path = state_path(RESERVE)
    if exists(path):
        return True
    try:
        with open(path, 'wb') as f:
            f.write(bytes(RESERVE_BYTES))
        return True
    except OSError:
        try:
            os.remove(path)     # a part-written reserve holds space and protects nothing
        except OSError:
            pass
        return False


def release_reserve():
    """Delete the reserve file; True if there was one to give."""
    try:
        os.remove(state_path(RESERVE))
        return True
    except OSError:
        return False


def discard_tmp(path):
    """Remove the NAME.tmp a failed write left, giving its space back. Kept when NAME is
    missing: then the .tmp may be the only copy (see read_json)."""
    if exists(path):
        try:
            os.remove(path + '.tmp')
        except OSError:
            pass


# -- sealed state files, two copies -----------------------------------------------------------

BACKUP = '.bak'
CHECK = b'\n#v2g-check '


def seal(body, seq):
    """body (bytes) followed by its check line: sequence, length, CRC-32 of both."""
    head = '{} {} '.format(seq, len(body))
    crc = crc32(body, crc32(head.encode()))
    return body + CHECK + ('{}{:08x}\n'.format(head, crc)).encode()


def unseal(blob):
    """(seq, body) of a sealed copy; ValueError saying what is wrong with it."""
    if not blob:
        raise ValueError('empty')
    i = blob.rfind(CHECK)
    if i < 0:
        raise ValueError('no check line (cut short or garbled)')
    body = blob[:i]
    parts = bytes(blob[i + len(CHECK):]).split()
    try:
        seq, size, crc = int(parts[0]), int(parts[1]), int(parts[2], 16)
    except (IndexError, ValueError):
        raise ValueError('check line unreadable (cut short or garbled)') from None
    if len(parts) != 3 or size != len(body):
        raise ValueError('{} bytes where its check line says {} (cut short or garbled)'.format(len(body), size))
    if crc32(body, crc32('{} {} '.format(seq, size).encode())) != crc:
        raise ValueError('content does not match its check (changed or garbled)')
    return seq, body


def write_copies(path, body, seq):
    """Both copies, one after the other, each atomically: a reset between them leaves one
    new and one old copy, both whole."""
    blob = seal(body, seq)
    write_atomic(path, blob)
    write_atomic(path + BACKUP, blob)


class Copies:
    """What read_copies found for one state file.
    body, seq: the newest whole copy (None, 0 when there is none);
    existed: some copy of the file (or its .tmp) is on flash;
    damage: what is wrong with NAME and NAME.bak, e.g. ['state/x.json: empty'];
    repair: the copies are not both whole and current, they should be written again;
    legacy: body is an unsealed NAME written before copies were sealed (no .bak yet)."""

    def __init__(self):
        self.body = None
        self.seq = 0
        self.existed = False
        self.damage = []
        self.repair = False
        self.legacy = False


def read_copies(path):
    """Read NAME, NAME.tmp, NAME.bak and NAME.bak.tmp; take the newest whole one. A whole .tmp
    is a write cut before its rename (on FAT, after NAME was removed): its content is good.
    A torn .tmp is what a cut write leaves and is no damage. Never raises."""
    got = Copies()
    seqs = []
    for name in (path, path + BACKUP):
        raw = read_bytes(name)
        seq = None
        for blob in (raw, read_bytes(name + '.tmp')):
            if blob is None:
                continue
            got.existed = True
            try:
                s, body = unseal(blob)
            except ValueError as e:
                if blob is raw:
                    got.damage.append('{}: {}'.format(name, e))
                continue
            if blob is raw:
                seq = s
            if got.body is None or s > got.seq:
                got.body, got.seq = body, s
        if raw is None and not _whole(name + '.tmp'):
            got.damage.append(name + ': missing')   # a whole .tmp beside it: a cut rename
        seqs.append(seq)
    got.repair = seqs[0] != got.seq or seqs[1] != got.seq
    if got.body is None and got.existed and read_bytes(path + BACKUP) is None \
            and read_bytes(path + BACKUP + '.tmp') is None:
        raw = read_bytes(path)
        if raw is not None and raw.rfind(CHECK) < 0:
            # written before the copies were sealed: taken once, then written sealed
            got.body, got.legacy, got.damage = raw, True, []
    if not got.existed:
        got.damage = []     # nothing was ever written: a first boot, not damage
    return got


def _whole(path):
    try:
        unseal(read_bytes(path))
        return True
    except ValueError:
        return False
