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


def choose(root=''):
    """The tree to run: 'a', 'b' or 'factory'. A pending slot runs on trial, its try counted
    on flash before any of its code runs; with no tries left it is reverted."""
    global ON_TRIAL
    ON_TRIAL = False
    st = read_state(root)
    if st is None:
        return 'factory'
    active = st.get('active')
    pending = st.get('pending')
    if pending in SLOTS:
        tries = st.get('tries')
        if type(tries) is int and tries > 0 and _is_dir(root + 'slots/' + pending):
            st['tries'] = tries - 1
            st['trial'] = True
            _write(root, st)
            ON_TRIAL = True
            return pending
        meta = (st.get('slots') or {}).get(pending) or {}
        st['reverted'] = 'slot {} ({}) failed its trial boot; running {} again'.format(
            pending, meta.get('version', '?'), active)
        st['pending'] = None
        st['trial'] = False
        st['tries'] = 0
        _write(root, st)
    if active in SLOTS and _is_dir(root + 'slots/' + active):
        return active
    return 'factory'


def fail_start(slot, reason, root=''):
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
            and _is_dir(root + 'slots/' + other)):
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


if __name__ == '__main__':
    TRIAL_WDT = None   # read by the pyboard HAL through __main__ (boot.py's namespace)
    try:
        _slot = choose()
        if _slot != 'factory':
            sys.path.insert(0, 'slots/' + _slot)
        if ON_TRIAL:
            TRIAL_WDT = start_trial_watchdog()
    except Exception:  # noqa: BLE001 - whatever went wrong, the factory firmware runs
        pass
