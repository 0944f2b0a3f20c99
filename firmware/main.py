# Runs after boot.py on every reset: start the controller. boot.py and main.py always run
# from the root, never from a slot, so this guard holds whatever an update brings.
import sys

STATE = 'update.json'


def on_trial(root=''):
    """True when boot.py put a pending slot on trial in front of sys.path."""
    import json
    for name in (STATE, STATE + '.bak'):    # the backup copy app/update.py keeps
        try:
            with open(root + name) as f:
                st = json.loads(f.read())
            p = st.get('pending')
            return (st.get('trial') is True and p in ('a', 'b') and len(sys.path) > 0
                    and sys.path[0].endswith('slots/' + p))
        except Exception:  # noqa: BLE001 - unreadable: the other copy, else not a trial
            pass
    return False


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


def running_slot():
    """'a' or 'b' when boot.py put that slot in front of sys.path, else None (factory)."""
    first = sys.path[0] if sys.path else ''
    for s in ('a', 'b'):
        if first.endswith('slots/' + s):
            return s
    return None


def fall_back(slot, e, root=''):
    """The confirmed slot `slot` failed to start: have boot.py's state run the fallback from
    the next boot (boot.fail_start). Returns the fallback, or None if nothing was recorded."""
    # The slot leaves sys.path and every module loaded from it leaves sys.modules, so that
    # `boot` below is the root's (a bundle may carry a boot.py of its own) and nothing of
    # the slot stays cached in this interpreter.
    path = sys.path.pop(0)
    for name in list(sys.modules):
        if path in (getattr(sys.modules[name], '__file__', None) or ''):
            del sys.modules[name]
    import boot
    reason = '{}: {}'.format(type(e).__name__, e)
    return boot.fail_start(slot, reason[:80], root)


def run(start=None, root='', reset_fn=None):
    """Import and start the application. Slot code on trial that fails to import or to start
    counts as a failed trial: reset at once (the outputs are still in their reset state,
    no HAL exists yet). The confirmed slot failing the same way is replaced by its fallback
    (V2G-604), then the same reset. The factory tree failing has nothing to fall back to: the
    error stands at the REPL, the outputs in their reset state (safe), and no reset loop."""
    try:
        if start is None:
            import app.run
            start = app.run.start
        return start()
    except Exception as e:  # noqa: BLE001 - KeyboardInterrupt (a flasher's Ctrl-C) passes
        if on_trial(root):
            print('slot on trial failed to start; resetting')
        else:
            slot = running_slot()
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
