"""Disk-backed FIFO for messages that must reach the CSMS (TransactionEvents).

One file per message, named by a zero-padded sequence number, written to a
temporary name, fsynced and renamed: a crash leaves either the whole message
or nothing, never half of one. The order survives a restart of the bridge
because it is the order of the names. A message leaves the queue only after
the CSMS answered it (`pop` after a successful send).
"""

import json
import os
from pathlib import Path

_SUFFIX = ".json"


class DiskQueue:
    def __init__(self, directory, max_items=100_000, on_drop=None):
        """on_drop(sequence number, message or None): called for each message pushed out
        by a full queue, so the loss is logged and counted rather than silent."""
        self.dir = Path(directory)
        self.on_drop = on_drop
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_items = max_items
        for stale in self.dir.glob("*.tmp"):   # a write cut short by a crash
            stale.unlink()
        names = self._names()
        self._next = int(names[-1][: -len(_SUFFIX)]) + 1 if names else 1
        self.dropped = 0

    def _names(self):
        return sorted(p.name for p in self.dir.iterdir() if p.name.endswith(_SUFFIX))

    def __len__(self):
        return len(self._names())

    def put(self, item: dict) -> int:
        """Append one message; returns its sequence number. When full, the oldest goes
        (an outage of weeks must not fill the disk), reported through on_drop."""
        names = self._names()
        while len(names) >= self.max_items:
            name = names.pop(0)
            path = self.dir / name
            try:
                old = json.loads(path.read_text(encoding="utf-8"))
            except (ValueError, OSError):
                old = None
            path.unlink(missing_ok=True)
            self.dropped += 1
            if self.on_drop is not None:
                self.on_drop(int(name[: -len(_SUFFIX)]), old)
        n = self._next
        self._next += 1
        final = self.dir / "{:012d}{}".format(n, _SUFFIX)
        tmp = final.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(item, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        _fsync_dir(self.dir)
        return n

    def peek(self):
        """(sequence number, message) of the oldest message, or None when empty.

        A file that does not parse (a disk fault) is set aside as *.bad rather
        than blocking every message behind it."""
        for name in self._names():
            path = self.dir / name
            try:
                return int(name[: -len(_SUFFIX)]), json.loads(path.read_text(encoding="utf-8"))
            except (ValueError, OSError):
                path.rename(path.with_suffix(".bad"))
        return None

    def pop(self, n: int) -> None:
        (self.dir / "{:012d}{}".format(n, _SUFFIX)).unlink(missing_ok=True)
        _fsync_dir(self.dir)

    def items(self):
        out = []
        for name in self._names():
            try:
                out.append(json.loads((self.dir / name).read_text(encoding="utf-8")))
            except (ValueError, OSError):
                continue
        return out


def _fsync_dir(d):
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json_atomic(path, obj) -> None:
    """Small state files (seqNo counter, app results) written the same crash-safe way."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, separators=(",", ":"))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path, default):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default
