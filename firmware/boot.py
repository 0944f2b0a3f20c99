# Runs first on every reset, before main.py. It only chooses the firmware tree the imports
# come from (docs/updates.md): the factory tree at the root, or slots/a or slots/b. It imports
# nothing of ours (a module imported here would stay cached from the wrong tree), and any
# fault in here leaves sys.path alone: the factory firmware runs.
import sys

STATE = 'update.json'
SLOTS = ('a', 'b')


def _is_dir(path):
    import os
    try:
        return os.stat(path)[0] & 0x4000 != 0
    except OSError:
        return False


def _write(root, st):
    # same scheme as app/storage.write_atomic: a reset leaves the old file or the new one
    import json
    import os
    tmp = root + STATE + '.tmp'
    with open(tmp, 'w') as f:
        f.write(json.dumps(st))
    os.rename(tmp, root + STATE)


def choose(root=''):
    """The tree to run: 'a', 'b' or 'factory'. A pending slot runs on trial, its try counted
    on flash before any of its code runs; with no tries left it is reverted."""
    import json
    try:
        with open(root + STATE) as f:
            st = json.loads(f.read())
    except (OSError, ValueError):
        return 'factory'
    if not isinstance(st, dict):
        return 'factory'
    active = st.get('active')
    pending = st.get('pending')
    if pending in SLOTS:
        tries = st.get('tries')
        if type(tries) is int and tries > 0 and _is_dir(root + 'slots/' + pending):
            st['tries'] = tries - 1
            st['trial'] = True
            _write(root, st)
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


if __name__ == '__main__':
    try:
        _slot = choose()
        if _slot != 'factory':
            sys.path.insert(0, 'slots/' + _slot)
    except Exception:  # noqa: BLE001 - whatever went wrong, the factory firmware runs
        pass
