"""`v2g vboard`: run the virtual controller board."""

import json
import signal
import sys
import threading

import click

from host_tools import vm
from host_tools.vboard import EV_CAN_CHOICES, METER_CHOICES, BoardError, VirtualBoard


@click.command(name="vboard")
@click.option("--state", "state_dir", default="state/vboard", show_default=True,
              type=click.Path(file_okay=False),
              help="Folder that holds the board's files (its flash); created if missing.")
@click.option("--board", default="sim", show_default=True, help="Board folder under boards/.")
@click.option("--blank", is_flag=True,
              help="Start a new state folder empty, like a board with only MicroPython on it.")
@click.option("--repl-port", type=click.IntRange(0, 65535), default=None,
              help="Also serve the REPL on socket://127.0.0.1:PORT (0 picks a free port).")
@click.option("--meter", type=click.Choice(METER_CHOICES), default=None,
              help="Meter data over Modbus RTU on the rs485 port: sdm630/sdm120 attach the meter "
                   "simulator (fed by the plant), external leaves the port to your own meter. "
                   "Without it the plant feeds the readings directly and the port stays silent.")
@click.option("--ev-can", type=click.Choice(EV_CAN_CHOICES), default="plant", show_default=True,
              help="Who sends the vehicle's BMS frames on the CAN bus: the simulated EV, or an "
                   "external node (v2g bench, python-can) through the can endpoint.")
@click.option("--can-bitrate", type=click.Choice(["125000", "250000", "500000", "1000000"]),
              default="500000", show_default=True,
              help="Bit rate of the board's CAN bus (slcan clients must match it, as on a real bus).")
def cli(state_dir, board, blank, repl_port, meter, ev_can, can_bitrate):
    """Run the controller firmware on the MicroPython VM behind real ports.

    Prints one JSON line naming the endpoints, then runs until Ctrl-C or SIGTERM:

    \b
      repl   pseudo-terminal with the MicroPython REPL (mpremote connect PATH)
      link   the firmware's host-link UART (framed CBOR, see docs/host-link.md)
      plant  JSON Lines in: scenario events (plug, ev_ready, grid, ...); one reply per line
      rs485  the RS-485 port (Modbus RTU meter side; see --meter)
      can    the CAN bus as a serial-line CAN (slcan) adapter for python-can
             (interface="slcan"); carries the controller's 0x600/0x610/0x611
             frames and the vehicle's BMS frames (see --ev-can)

    A new state folder starts with the working tree's firmware on it (or empty with --blank);
    what is copied onto the board stays there across restarts, like flash.
    """
    # Handlers first: a signal that arrives while the board starts (or right after its JSON line)
    # must still end in a clean stop with the files saved, never in a bare kill.
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    if not state_dir.strip():
        raise click.BadParameter("names no folder: give the folder that holds the board's files",
                                 param_hint="--state")
    try:
        board_ = VirtualBoard(state_dir, board=board, blank=blank, repl_port=repl_port, meter=meter,
                              ev_can=ev_can, can_bitrate=int(can_bitrate))
        endpoints = board_.start()
    except (BoardError, vm.VmMissing) as e:
        raise click.ClickException(str(e)) from e
    print(json.dumps(endpoints), flush=True)
    # the JSON line is for programs; people get where to point their tools
    for hint in ("REPL:       mpremote connect {}".format(endpoints["repl"]),
                 "host link:  v2g console --port {}   (or v2g diag --all --port ...)".format(endpoints["link"]),
                 "plant:      JSON Lines events, e.g. {{\"do\": \"plug\"}} > {}".format(endpoints["plant"]),
                 "CAN:        python-can interface=slcan channel={}".format(endpoints["can"]),
                 "RS-485:     {}".format(endpoints["rs485"]),
                 "the same ports, by names that stay: {}/{{repl,link,plant,rs485,can}}.pty".format(
                     endpoints["state"])):
        print("vboard: " + hint, file=sys.stderr, flush=True)
    while not done.wait(0.5):
        pass
    board_.stop()
    print("vboard: files saved in {}".format(state_dir), file=sys.stderr)
