# Runs first on every reset, before main.py. It only chooses the firmware tree the imports
# come from (docs/updates.md): the factory tree at the root, or slots/a or slots/b. It imports
# nothing of ours (a module imported here would stay cached from the wrong tree), and any
# fault in here leaves sys.path alone: the factory firmware runs.
import sys

STATE = 'update.json'
BACKUP = 'update.json.bak'
SLOTS = ('a', 'b')
# Watchdog timeout while a slot on trial is imported and started, before its HAL exists. The
# pyboard HAL takes the running watchdog over at its own timeout (2 s) and feeds it.
TRIAL_WDT_MS = 8000
ON_TRIAL = False      # set by choose(): the chosen slot runs on trial
# With two ROMFS partitions the slots are partitions (docs/updates.md, "Two ROM partitions")
ROM_PART = {'factory': 0, 'a': 0, 'b': 1}


def _is_dir(path):
    import os
    try:
        return os.stat(path)[0] & 0x4000 != 0
    except OSError:
        return False


def _write(root, st):
    # same scheme as app/storage.write_atomic, both copies as app/update.py writes them
    import json
    import os
    data = json.dumps(st)
    for name in (STATE, BACKUP):
        path = root + name
        with open(path + '.tmp', 'w') as f:
            f.write(data)
        try:
            os.rename(path + '.tmp', path)
        except OSError:
            # a rename that does not replace (FAT): remove, then rename
            os.remove(path)
            os.rename(path + '.tmp', path)


def read_state(root=''):
    """update.json, else its backup (each, when missing, from a complete .tmp a FAT replace
    left behind), else None."""
    import json
    for name in (STATE, BACKUP):
        for path in (root + name, root + name + '.tmp'):
            try:
                with open(path) as f:
                    st = json.loads(f.read())
            except (OSError, ValueError):
                if path.endswith('.tmp') or not _exists(path):
                    continue
                break       # the file is there but unreadable: try the other copy
            if isinstance(st, dict):
                return st
            break
    return None


def _exists(path):   # boot.py runs before app/ is importable: its own copy
    import os
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def rom_ab():
    """True when the build has two ROMFS partitions."""
    try:
        import vfs
    except ImportError:
        return False
    f = getattr(vfs, 'rom_ioctl', None)
    return f is not None and f(1) >= 2


def _present(root, slot, rom):
    if rom:     # the partition starts with a ROMFS header
        import vfs
        return bytes(vfs.rom_ioctl(2, ROM_PART[slot])[:3]) == b'\xd2\xcd\x31'
    return _is_dir(root + 'slots/' + slot)


def damage(root, slot):
    """None when every file the installer listed for the slot (slots/<slot>.sums: a line of
    sha256, size and name per component) is there whole, else what is not. Checked before
    any of the slot's code runs: a damaged module may not even raise (a truncated .mpy
    hangs MicroPython's loader)."""
    import binascii
    import hashlib
    base = root + 'slots/' + slot
    try:
        sums = open(base + '.sums')
    except OSError:
        return 'no file list ' + base + '.sums'
    buf = bytearray(512)
    with sums:
        for line in sums:
            part = line.split(None, 2)
            if len(part) != 3:
                return 'file list ' + base + '.sums damaged'
            name = part[2].strip()
            h = hashlib.sha256()
            n = 0
            try:
                with open(base + '/' + name, 'rb') as f:
                    while True:
                        k = f.readinto(buf)
                        if not k:
                            break
                        h.update(memoryview(buf)[:k])
                        n += k
            except OSError:
                return name + ' missing'
            if str(n) != part[1] or binascii.hexlify(h.digest()).decode() != part[0]:
                return name + ' damaged'
    return None


def choose(root='', rom=False):
    """The tree to run: 'a', 'b' or 'factory'. A pending slot runs on trial, its try counted
    on flash before any of its code runs; with no tries left it is reverted. `rom`: the
    slots are partitions."""
    global ON_TRIAL
    ON_TRIAL = False
    st = read_state(root)
    if st is None:
        return 'factory'
    active = st.get('active')
    pending = st.get('pending')
    if pending in SLOTS:
        tries = st.get('tries')
        why = ''
        if type(tries) is int and tries > 0 and _present(root, pending, rom):
            bad = None if rom else damage(root, pending)
            if bad is None:
                st['tries'] = tries - 1
                st['trial'] = True
                _write(root, st)
                ON_TRIAL = True
                return pending
            why = ' (' + bad + ')'
        _revert(root, st, why)
    # a confirmed slot found damaged fails its start here, as it would at import (V2G-604),
    # and its fallback is checked the same way; a partition that does not mount: mount_rom
    for _ in SLOTS:
        if active not in SLOTS or not (rom or _present(root, active, rom)):
            break
        bad = None if rom else damage(root, active)
        if bad is None:
            return active
        active = fail_start(active, bad[:80], root)
    return 'factory'


def _revert(root, st, why):
    pending = st['pending']
    meta = (st.get('slots') or {}).get(pending) or {}
    st['reverted'] = 'slot {} ({}) failed its trial boot{}; running {} again'.format(
        pending, meta.get('version', '?'), why, st.get('active'))
    st['pending'] = None
    st['trial'] = False
    st['tries'] = 0
    _write(root, st)


def fail_start(slot, reason, root='', rom=False):
    """The confirmed slot `slot` failed to start (main.py): record it (`failed_start`, reported
    as V2G-604 by app/update.py at the next start) and make the fallback active, so the next
    boot runs that. The fallback is the other slot if it was confirmed once and its security
    counter is not below the stored one (a raised counter means never go back below it), else
    the factory tree. The failed slot loses its confirmation: it is never a fallback again.
    Returns the fallback, or None when the state cannot be read (nothing is written then)."""
    st = read_state(root)
    if st is None or slot not in SLOTS or st.get('active') != slot:
        return None
    slots = st.get('slots')
    if not isinstance(slots, dict):
        slots = st['slots'] = {}
    meta = slots.get(slot)
    if isinstance(meta, dict):
        meta.pop('confirmed', None)
    else:
        meta = {}
    other = 'b' if slot == 'a' else 'a'
    ometa = slots.get(other)
    sec = st.get('sec')
    fallback = 'factory'
    if (isinstance(ometa, dict) and ometa.get('confirmed') is True and st.get('pending') != other
            and type(ometa.get('sec')) is int and type(sec) is int and ometa['sec'] >= sec
            and _present(root, other, rom)):
        fallback = other
    st['active'] = fallback
    st['failed_start'] = {'slot': slot, 'version': meta.get('version', '?'), 'reason': reason,
                          'fallback': fallback, 'reported': False}
    _write(root, st)
    return fallback


def start_trial_watchdog():
    """Start the watchdog for a slot on trial, where the port has one (None elsewhere).
    Without it, slot code that hangs or fails before its HAL starts the watchdog (the
    pyboard HAL starts it only without a USB host) would leave the board at the REPL, never
    reverting. It cannot be stopped: from here on the HAL must feed it."""
    try:
        import machine
    except ImportError:
        return None   # the virtual board: main.py's guard resets it on a failed start
    wdt = getattr(machine, 'WDT', None)
    if wdt is None:
        return None
    return wdt(timeout=TRIAL_WDT_MS)


def _mount(k):
    import vfs
    try:
        vfs.umount('/rom')
    except OSError:
        pass
    vfs.mount(vfs.VfsRom(vfs.rom_ioctl(2, k)), '/rom')
    if '/rom' not in sys.path:
        sys.path.insert(0, '/rom')


def mount_rom(slot, root=''):
    """Mount the slot's partition at /rom (MicroPython mounted partition 0 there) and leave
    its number in __main__ for app/update.py, which never writes that one. One that does not
    mount fails like a slot: reverted on trial (V2G-603), else its fallback (V2G-604)."""
    global ON_TRIAL
    k = ROM_PART[slot]
    try:
        if k or not _present(root, slot, True):
            _mount(k)
    except Exception as e:  # noqa: BLE001 - a damaged image: the other partition, if any
        reason = 'partition {} does not mount: {}: {}'.format(k, type(e).__name__, e)[:80]
        st = read_state(root)
        if ON_TRIAL and st is not None:
            _revert(root, st, ' (' + reason + ')')
            ON_TRIAL = False
            slot = st['active'] if st.get('active') in SLOTS else 'factory'
        else:
            slot = fail_start(slot, reason, root, True) or 'factory'
        k2 = ROM_PART.get(slot, 0)
        k = 0 if k2 == k else k2
        try:
            _mount(k)       # /rom may have been unmounted for the one that failed
        except Exception:  # noqa: BLE001 - nothing left that mounts
            pass
    import __main__
    __main__.V2G_ROM_PART = k
    return slot


if __name__ == '__main__':
    TRIAL_WDT = None   # read by the pyboard HAL through __main__ (boot.py's namespace)
    try:
        _rom = rom_ab()
        _slot = choose(rom=_rom)
        if _rom:
            mount_rom(_slot)
        elif _slot != 'factory':
            sys.path.insert(0, 'slots/' + _slot)
        if ON_TRIAL:
            TRIAL_WDT = start_trial_watchdog()
    except Exception:  # noqa: BLE001 - whatever went wrong, the factory firmware runs
        pass
