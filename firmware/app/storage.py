"""Everything the controller keeps across a reset goes through here.

Writes are atomic: the new content goes to NAME.tmp, then a rename replaces NAME, so a reset
mid-write leaves the old file or the new one, never half of one. A leftover .tmp from such a
reset is ignored (and overwritten by the next write).
"""
import json
import os

STATE_DIR = 'state'


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def ensure_dir(path):
    if not _exists(path):
        os.mkdir(path)


def write_atomic(path, data):
    tmp = path + '.tmp'
    with open(tmp, 'wb') as f:
        f.write(data)
    # MicroPython's os.rename replaces an existing target on littlefs and FAT alike.
    os.rename(tmp, path)


def read_bytes(path, default=None):
    try:
        with open(path, 'rb') as f:
            return f.read()
    except OSError:
        return default


def read_json(path, default=None):
    """The file's JSON, or `default` when it is missing or unreadable (never raises)."""
    raw = read_bytes(path)
    if raw is None:
        return default
    try:
        return json.loads(raw)
    except ValueError:
        return default


def write_json(path, obj):
    write_atomic(path, json.dumps(obj).encode())


def state_path(name):
    ensure_dir(STATE_DIR)
    return STATE_DIR + '/' + name
