"""Power cuts at a precise step of a firmware update, played by the simulated board's flash.

The virtual board's power-cut tests (tests/host/test_fota.py) leave a file `fota_fault.json`,
{"step": "write" | "state" | "trial" | "confirm"}, on the board's flash. At boot the board
reads it and arms its flash: from the named point on, the flash takes nothing more, as a
flash whose supply is gone. Where the cut falls inside a host command (write, state) every
later write fails (OSError), so the host hears of it as it would of a board that died
mid-answer; elsewhere (trial, confirm) writes go nowhere without a word. The firmware
itself knows nothing of this; the test then cuts the power for real
(VirtualBoard.power_cut) and the next boot finds the files as they stood at the cut.

- write: the write into a slot's component that crosses the middle of the bundle puts half
  of its bytes on flash, then fails (OSError): the chunk is never acknowledged.
- state: fota_finish's new update.json.tmp is written whole; its rename fails (OSError).
- confirm: the confirmation's update.json.tmp is written whole; its rename never happens.
- trial: a boot on trial keeps nothing from its start: the trial never confirms on flash.

The file is removed at the cut (before the flash dies), so the boot after it runs normally;
the test waits for that. Nothing here is loaded unless the file is there.
"""

import builtins
import json
import os

FAULT_FILE = 'fota_fault.json'
STATE_FILE = 'update.json'
STEPS = ('write', 'state', 'trial', 'confirm')

_open = builtins.open
_rename = os.rename
_remove = os.remove
_rmdir = os.rmdir
_mkdir = os.mkdir


def _read_json(path):
    try:
        with _open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


class _Sink:
    """A file opened on a flash without power: takes writes, keeps nothing."""

    def write(self, data):
        return len(data)

    def flush(self):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _SlotFile:
    """A slot component opened for writing: counts the bytes towards the middle of the bundle."""

    def __init__(self, f, cut):
        self.f = f
        self.cut = cut

    def write(self, data):
        cut = self.cut
        if cut.dead:
            cut._gone()
            return len(data)
        n = len(data)
        if cut.step == 'write' and cut.slot_bytes + n > cut.half():
            self.f.write(data[:n // 2])   # half a chunk reaches the flash, never acknowledged
            self.f.flush()
            cut.fire()
            raise OSError(5, 'power cut while writing a slot')
        cut.slot_bytes += n
        return self.f.write(data)

    def flush(self):
        if not self.cut.dead:
            self.f.flush()

    def close(self):
        self.f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class PowerCut:
    def __init__(self, step, root=''):
        self.step = step
        self.root = root
        self.dead = False
        self.loud = step in ('write', 'state')   # writes after the cut fail rather than vanish
        self.on_trial_at_boot = False
        self.slot_bytes = 0

    def half(self):
        st = _read_json(self.root + STATE_FILE)
        dl = st.get('dl') if isinstance(st, dict) else None
        size = dl.get('size') if isinstance(dl, dict) else None
        return size // 2 if isinstance(size, int) else 1 << 30

    def fire(self):
        """The supply goes: the fault file first (the next boot runs normally), then the flash."""
        try:
            _remove(self.root + FAULT_FILE)
        except OSError:
            pass
        self.dead = True

    def open(self, path, mode='r', *args, **kw):
        writing = 'w' in mode or 'a' in mode or '+' in mode
        if not writing:
            return _open(path, mode, *args, **kw)
        if self.dead:
            self._gone()
            return _Sink()
        f = _open(path, mode, *args, **kw)
        if 'slots/' in path and '.head' not in path:
            return _SlotFile(f, self)
        return f

    def _gone(self):
        if self.loud:
            raise OSError(5, 'no power: the flash takes no more writes')

    def rename(self, src, dst):
        if self.dead:
            return self._gone()
        if dst.endswith(STATE_FILE) and src.endswith('.tmp'):
            st = _read_json(src)
            if isinstance(st, dict):
                if self.step == 'state' and st.get('pending') is not None and not st.get('trial'):
                    self.fire()
                    raise OSError(5, 'power cut before the rename')
                if self.step == 'confirm' and st.get('pending') is None and self.on_trial_at_boot:
                    self.fire()
                    return
        _rename(src, dst)

    def remove(self, path):
        if self.dead:
            return self._gone()
        _remove(path)

    def rmdir(self, path):
        if self.dead:
            return self._gone()
        _rmdir(path)

    def mkdir(self, path):
        if self.dead:
            return self._gone()
        _mkdir(path)


def arm(root=''):
    """Called by the simulated board at boot: arms the flash when the fault file asks it.
    root: where the installer's files are ('' on the board)."""
    got = _read_json(root + FAULT_FILE)
    step = got.get('step') if isinstance(got, dict) else None
    if step not in STEPS:
        return None
    cut = PowerCut(step, root)
    st = _read_json(root + STATE_FILE)
    cut.on_trial_at_boot = isinstance(st, dict) and st.get('pending') is not None and bool(st.get('trial'))
    builtins.open = cut.open
    os.rename = cut.rename
    os.remove = cut.remove
    os.rmdir = cut.rmdir
    os.mkdir = cut.mkdir
    if step == 'trial' and cut.on_trial_at_boot:
        cut.fire()     # this boot keeps nothing: the trial never confirms on flash
    return cut


def disarm():
    """The flash as it was (tests that arm it in a running interpreter)."""
    builtins.open = _open
    os.rename = _rename
    os.remove = _remove
    os.rmdir = _rmdir
    os.mkdir = _mkdir
