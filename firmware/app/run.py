"""The asyncio shell: start the station and step it every CONTROL_PERIOD_MS.

On a board, main.py calls run() and never returns. On the virtual board (MicroPython's
WebAssembly port) asyncio runs on the host's event loop, so start() schedules the task and
returns, leaving the REPL free as it would be after Ctrl-C on a board.
"""
import asyncio

from board import hal as board_hal
from core import ticks
from core.controller import CONTROL_PERIOD_MS

from app.station import Station

station = None   # the running station, for the REPL and diagnostics


async def control_loop(hal):
    global station
    now = hal.ticks_ms()
    st = station = Station(hal, now)
    next_ms = now
    try:
        await _run(hal, st, next_ms)
    finally:
        # whatever ends the loop (Ctrl-C from a flasher, a bug) leaves the outputs safe,
        # then keeps what the event log knows about why
        hal.safe_state()
        try:
            st.save_events()
        except Exception:  # noqa: BLE001
            pass


async def _run(hal, station, next_ms):
    # the loop steps its own station (the module's `station` is for the REPL and tools): two
    # loops in one interpreter, as the simulator may run, never step each other's
    # the board's clock: ticks and sleeps on one time base (a board whose clock is not the
    # MCU's own, the simulated board in simulated time, brings its own sleep)
    sleep_ms = getattr(hal, 'sleep_ms', None) or asyncio.sleep_ms
    while not hal.stop_requested():
        now = hal.ticks_ms()
        try:
            if ticks.due(now, next_ms):
                station.tick(now)
                next_ms = ticks.add(next_ms, CONTROL_PERIOD_MS)
                if ticks.diff(now, next_ms) > 10 * CONTROL_PERIOD_MS:
                    next_ms = now   # we fell far behind (debugger, flash write): do not burst
            else:
                station.io(now)     # between steps: the meter port's bytes, nothing else
            # asleep until the next step, or sooner when the meter port needs its bytes moved
            wake = next_ms
            io_ms = station.next_io_ms(hal.ticks_ms())
            if io_ms is not None and ticks.diff(io_ms, wake) < 0:
                wake = io_ms
        except Exception as e:  # noqa: BLE001
            # A bug in the step or the meter's pump: outputs to the safe state (contactor open, pilot at
            # state F, no discharge request, in the finally above) and stop feeding the
            # watchdog, which resets the board into a clean start.
            hal.log_exception(e)
            break
        wait = ticks.diff(wake, hal.ticks_ms())
        await sleep_ms(wait if wait > 0 else 0)


def start():
    hal = board_hal.Hal()
    run_forever = getattr(asyncio, 'run', None)
    if run_forever is None:
        return asyncio.create_task(control_loop(hal))
    return run_forever(control_loop(hal))
