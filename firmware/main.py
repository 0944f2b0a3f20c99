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


def run(start=None, root='', reset_fn=None):
    """Import and start the application. Slot code on trial that fails to import or to start
    counts as a failed trial: reset at once (the outputs are still in their reset state,
    no HAL exists yet). Outside a trial the error stands at the REPL, as before."""
    try:
        if start is None:
            import app.run
            start = app.run.start
        return start()
    except Exception as e:  # noqa: BLE001 - KeyboardInterrupt (a flasher's Ctrl-C) passes
        if not on_trial(root):
            raise
        print('slot on trial failed to start; resetting')
        _log(e, root)
        (reset_fn or reset)()
        return None


if __name__ == '__main__':
    run()
