"""`v2g bench`: bench scenarios against a controller (real or virtual) over CAN, RS-485 and the host link."""

import sys

import click

from host_tools import bench
from host_tools.commands._checks import FiniteFloatRange, check_out_file, check_plot_file, check_port, port_problem


@click.command(name="bench")
@click.argument("scenario", type=click.Path(exists=True, dir_okay=False))
@click.option("--link", "link", required=True, help="The controller's host-link port (or pyserial URL).")
@click.option("--can-interface", type=click.Choice(bench.CAN_INTERFACES), default="slcan", show_default=True,
              help="python-can interface of the CAN adapter.")
@click.option("--can-channel", required=True,
              help="Adapter channel: serial port for slcan (the virtual board's can endpoint), can0, PCAN_USBBUS1...")
@click.option("--can-bitrate", type=click.IntRange(1, 1000000), default=500000, show_default=True, help="CAN bit rate.")
@click.option("--meter-port", default=None,
              help="Serial port where the bench plays the Modbus RTU meter (pymodbus); without it the "
                   "controller's own meter is used.")
@click.option("--plant", default=None,
              help="The virtual board's plant port: pilot, grid and meter events go there. Without it, "
                   "pilot events are prompted for the operator.")
@click.option("--junit", "junit", type=click.Path(dir_okay=False), default=None, help="Write JUnit XML here.")
@click.option("--plot", "plot", type=click.Path(dir_okay=False), default=None,
              help="Plot of the run with its check windows: .png (matplotlib) or .html (self-contained).")
@click.option("--settle", type=FiniteFloatRange(0, 3600), default=10.0, show_default=True,
              help="Seconds to wait for the controller to be ready (no V2G-507/V2G-120) before the run.")
@click.option("-q", "--quiet", is_flag=True, help="Only the result table.")
def cli(scenario, link, can_interface, can_channel, can_bitrate, meter_port, plant, junit, plot, settle, quiet):
    """Play the vehicle (and optionally the meter) from SCENARIO and check the controller.

    Exit status: 0 all checks passed, 1 a check failed, 2 bad scenario or set-up.
    """
    try:
        sc = bench.load(scenario)
    except bench.BenchError as e:
        click.echo("bench: {}".format(e), err=True)
        sys.exit(2)
    # the scenario first, then the set-up: nothing is opened until every value can be used
    check_port(link, "--link")
    if can_interface == "slcan":
        check_port(can_channel, "--can-channel")
    check_port(meter_port, "--meter-port")
    if plant is not None:
        # the plant port is opened for writing as a file: a regular file there would be overwritten
        why = "a URL: give the virtual board's plant device path" if "://" in plant else port_problem(plant)
        if why:
            raise click.BadParameter("cannot open {}: {}".format(plant, why), param_hint="--plant")
    check_out_file(junit, "--junit", (scenario,), make_parents=True)
    check_out_file(plot, "--plot", (scenario, junit), make_parents=True)
    check_plot_file(plot, "--plot", extra=(".html", ".htm"))
    try:
        b = bench.Bench(sc, link, can_interface=can_interface, can_channel=can_channel, can_bitrate=can_bitrate,
                        meter_port=meter_port, plant=plant, settle_s=settle,
                        log=None if quiet else (lambda line: click.echo(line, err=True)))
        result = b.run()
    except bench.BenchError as e:
        click.echo("bench: {}".format(e), err=True)
        sys.exit(2)
    click.echo(result.table())
    if junit:
        try:
            click.echo("JUnit XML: {}".format(result.junit(junit)))
        except OSError as e:
            click.echo("bench: cannot write --junit {}: {}".format(junit, e.strerror), err=True)
            sys.exit(2)
    if plot:
        try:
            click.echo("plot: {}".format(result.plot(plot)))
        except bench.BenchError as e:
            click.echo("bench: {}".format(e), err=True)
        except OSError as e:
            click.echo("bench: cannot write --plot {}: {}".format(plot, e.strerror), err=True)
            sys.exit(2)
    if result.setup_error:
        sys.exit(2)
    sys.exit(0 if result.passed else 1)
