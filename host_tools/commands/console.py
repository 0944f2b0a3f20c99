"""`v2g console`: interactive diagnostic prompt over the controller's host link."""

import sys

import click

from host_tools import console as C
from host_tools import diag
from host_tools.commands._checks import FiniteFloatRange, check_port
from host_tools.link import LinkError


@click.command(name="console")
@click.option("--port", required=True, help="The controller's host-link port (device path or socket:// URL).")
@click.option("--exec", "commands", multiple=True, metavar="COMMAND",
              help="Run COMMAND and exit (repeatable), e.g. --exec status --exec 'config get MAX_CHARGE_AMPS'.")
@click.option("--timeout", type=FiniteFloatRange(0.5, 60), default=3.0, show_default=True,
              help="Seconds to wait for each answer.")
def cli(port, commands, timeout):
    """Status, live telemetry, events, settings, meter, CAN monitor, update state and
    clearing a latched contactor fault.

    Without --exec: a prompt with history (type help). Commands are read from standard
    input when it is not a terminal, one per line.
    """
    check_port(port, "--port")
    try:
        con = C.Console(port, timeout=timeout).open()
    except LinkError as e:
        raise click.ClickException(str(e)) from e
    try:
        # a controller that does not answer hello is told apart here, not at the first command
        con.link.hello(timeout=timeout)
    except LinkError as e:
        tail = con.link.rx_tail
        con.close()
        raise click.ClickException(diag.no_hello_hint(port, e, tail)) from None
    failed = False
    try:
        if commands or not sys.stdin.isatty():
            lines = commands or [ln for ln in sys.stdin.read().splitlines() if ln.strip()]
            con.stream = click.echo     # tel and watch rows as they arrive
            for line in lines:
                if line.strip() in ("quit", "exit"):
                    break
                try:
                    text = con.run_line(line)
                    if text:
                        click.echo(text)
                except C.ConsoleError as e:
                    click.echo("error: {}".format(e), err=True)
                    failed = True
        else:
            click.echo("v2g console on {} (type help; Ctrl-D quits)".format(port))
            C.interactive(con, sys.stdout)
    finally:
        con.close()
    if failed:
        sys.exit(1)
