# Runs after boot.py on every reset: start the controller. boot.py and main.py always run
# from the root, never from a slot, so this guard holds whatever an update brings.
import sys

STATE = 'update.json'


def _state(root):
    import json
    for name in (STATE, STATE + '.bak'):    # the backup copy app/update.py keeps
        try:
            with open(root + name) as f:
                st = json.loads(f.read())
            if isinstance(st, dict):
                return st
        except Exception:  # noqa: BLE001 - unreadable: the other copy, else none
            pass
    return {}


def rom_part():     # the partition boot.mount_rom put at /rom; None: slots are folders
    import __main__
    return getattr(__main__, 'V2G_ROM_PART', None)


def _runs(s):   # boot.py put slot s first in sys.path, or its partition at /rom
    k = rom_part()
    if k is None:
        return len(sys.path) > 0 and sys.path[0].endswith('slots/' + s)
    return k == ('a', 'b').index(s)     # as boot.ROM_PART


def on_trial(root=''):
    """True when boot.py put a pending slot on trial."""
    st = _state(root)
    p = st.get('pending')
    return st.get('trial') is True and p in ('a', 'b') and _runs(p)


def reset():
    """A hard reset: boot.py then counts the next try, or reverts after the last."""
    try:
        import machine
    except ImportError:
        import hostio       # the virtual board: its VM host restarts it as a reset would
        hostio.reset()
        return
    machine.reset()


def _log(e, root):
    if hasattr(sys, 'print_exception'):
        sys.print_exception(e)
        try:
            with open(root + 'state/last_exception.txt', 'w') as f:
                sys.print_exception(e, f)
        except OSError:
            pass
    else:
        print(repr(e))


def running_slot(root=''):
    """'a' or 'b' when boot.py put that slot first, else None (factory). Partition 0 holds
    slot a or the factory image: the active one."""
    for s in ('a', 'b'):
        if _runs(s) and (rom_part() is None or _state(root).get('active') == s):
            return s
    return None


def fall_back(slot, e, root=''):
    """The confirmed slot `slot` failed to start: have boot.py's state run the fallback from
    the next boot (boot.fail_start). Returns the fallback, or None if nothing was recorded."""
    # The slot leaves sys.path and every module loaded from it leaves sys.modules, so that
    # `boot` below is the root's (a bundle may carry a boot.py of its own) and nothing of
    # the slot stays cached in this interpreter.
    rom = rom_part() is not None
    path = '/rom' if rom else sys.path[0]
    if path in sys.path:
        sys.path.remove(path)
    for name in list(sys.modules):
        if path in (getattr(sys.modules[name], '__file__', None) or ''):
            del sys.modules[name]
    import boot
    reason = '{}: {}'.format(type(e).__name__, e)
    return boot.fail_start(slot, reason[:80], root, rom)


def run(start=None, root='', reset_fn=None):
    """Import and start the application. Slot code (a folder or a ROM partition) on trial that
    fails to import or to start counts as a failed trial: reset at once (the outputs are
    still in their reset state, no HAL exists yet). The confirmed slot failing the same way
    is replaced by its fallback (V2G-604), then the same reset. The factory tree failing has
    nothing to fall back to: the error stands at the REPL, the outputs in their reset state
    (safe), and no reset loop."""
    try:
        if start is None:
            import app.run
            start = app.run.start
        return start()
    except Exception as e:  # noqa: BLE001 - KeyboardInterrupt (a flasher's Ctrl-C) passes
        if on_trial(root):
            print('slot on trial failed to start; resetting')
        else:
            slot = running_slot(root)
            if slot is None:
                raise
            try:
                fallback = fall_back(slot, e, root)
            except Exception:  # noqa: BLE001 - the state could not be written
                fallback = None
            if fallback is None:
                raise e from None
            # Reset rather than import the fallback here: a fresh interpreter starts it with
            # nothing left of the failed slot (modules, half-made objects, a HAL or a
            # watchdog it started), and boot.py chooses it exactly as on any later boot.
            print('confirmed slot {} failed to start; running {} from the next boot'.format(slot, fallback))
        _log(e, root)
        (reset_fn or reset)()
        return None


if __name__ == '__main__':
    run()
