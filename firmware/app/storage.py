"""Everything the controller keeps across a reset goes through here.

Writes go to NAME.tmp first, then a rename puts the new content in place, so a reset
mid-write leaves the old file and a torn .tmp (ignored, and overwritten by the next write).
On littlefs (the boards' filesystem) the rename replaces NAME atomically. MicroPython's FAT
driver cannot rename onto an existing file: it removes NAME, then renames, and a reset
between the two leaves no NAME, only a complete NAME.tmp. read_json recovers that case:
with NAME missing it takes NAME.tmp if it parses (a torn one does not) and renames it into
place. Raw files (read_bytes) are not recovered: nothing tells a torn .tmp from a whole one.
"""
import json
import os

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
