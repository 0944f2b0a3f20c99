"""`v2g diag` / `v2g-diag`: the controller's diagnostic report."""

import json
import os

import click

from host_tools import diag
from host_tools.commands._checks import FiniteFloatRange, port_problem


@click.command(name="diag", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--all", "all_", is_flag=True, help="The full report: every section.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON instead of text.")
@click.option("--html", "as_html", is_flag=True,
              help="The full report as one self-contained HTML page (to archive: > report.html).")
@click.option("--port", default=lambda: os.environ.get("V2G_LINK", "/dev/ttyACM0"), show_default="$V2G_LINK or /dev/ttyACM0",
              help="The controller's host-link port (device path or socket:// URL).")
@click.option("--timeout", type=FiniteFloatRange(0.5, 60), default=3.0, show_default=True,
              help="Seconds to wait for each answer.")
def cli(all_, as_json, as_html, port, timeout):
    """Report firmware and board, settings with their source, current limits and why,
    active errors, the event log, link/meter/CAN statistics and the update state."""
    if as_json and as_html:
        raise click.UsageError("--json and --html: choose one")
    why = port_problem(port)
    if why:     # worded as before for scripts that look for it, with the reason added
        raise click.ClickException("no answer from the controller on --port {}: cannot open it: {}".format(
            port, why))
    try:
        report = diag.collect(port, timeout=timeout)
    except diag.DiagError as e:
        raise click.ClickException(str(e)) from e
    if as_html:
        click.echo(diag.render_html(report), nl=False)
    elif as_json:
        if not all_:
            report = {k: report[k] for k in ("generated", "port", "firmware", "limits", "errors")}
        click.echo(json.dumps(diag.plain(report), indent=2, sort_keys=True, default=str))
    elif all_:
        click.echo(diag.render(report), nl=False)
    else:
        click.echo(diag.summary(report), nl=False)
