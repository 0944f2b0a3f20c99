"""`v2g flash`: provision a controller over USB (its MicroPython REPL)."""

import sys

import click

from host_tools import flash as F
from host_tools.commands._checks import FiniteFloatRange, check_port


@click.command(name="flash")
@click.option("--port", required=True, help="The board's REPL: /dev/ttyACM0, COM5, socket://HOST:PORT.")
@click.option("--board", required=True, help="Board folder under boards/ (sim, pyboard, pybd_sf6).")
@click.option("--config", "config", type=click.Path(dir_okay=False),
              help="v2g_vars.json to install; validated first with the controller's own rules.")
@click.option("--pubkey", type=click.Path(dir_okay=False),
              help="Update public key (KEY.pub.pem) to install as update_key.bin.")
@click.option("--dry-run", is_flag=True, help="List what would change; write nothing; leave the running controller alone.")
@click.option("--link", "link_url", default=None,
              help="The controller's host-link port: after the reset, confirm its version by hello.")
@click.option("--boot-wait", type=FiniteFloatRange(1, 120), default=10.0, show_default=True,
              help="Seconds to watch the boot after the reset.")
@click.option("--frozen", is_flag=True,
              help="The board runs a MicroPython image with the firmware frozen in (pyboard: "
                   "FROZEN_MANIFEST=firmware/manifest.py): copy only what the image lacks, remove "
                   "copies of the frozen modules.")
def cli(port, board, config, pubkey, dry_run, link_url, boot_wait, frozen):
    """Compile the firmware for BOARD, copy what changed, install the settings and the
    update key, reset the board and confirm the version it runs.

    A bad settings file is refused (V2G-400, naming each key) before the board is touched.
    Only files whose SHA-256 differs are copied; files of ours the new firmware no longer
    has are removed; the controller's state/ folder is kept.
    """
    if dry_run and link_url:
        raise click.UsageError("--link confirms the version after the reset, and --dry-run does not reset: "
                               "give one of them")
    try:
        plan = F.prepare(board, config=config, pubkey=pubkey, frozen=frozen)
    except F.FlashError as e:
        raise click.ClickException(str(e)) from e
    # the files first (a bad settings file is named even with no board attached), then the ports
    check_port(port, "--port")
    check_port(link_url, "--link")
    for note in plan.config_notes:
        click.echo("note: " + note, err=True)
    for line in plan.notes:
        click.echo(line, err=True)
    try:
        # the board is read without stopping a controller where the REPL is free: a dry run
        # or a reflash with nothing changed leaves it running; flash() stops it before a write
        with F.Board(port, interrupt=False) as b:
            changes = F.compare(b, plan)            # asked once; flash() works from it
            if dry_run or not changes.empty:
                click.echo(plan.installs, err=True)
            if dry_run:
                report = F.flash(b, plan, dry_run=True, changes=changes, wait_s=boot_wait)
            else:
                size = sum(n for _, _, n in changes.copy) + (changes.rom[1] if changes.rom else 0) or 1
                with click.progressbar(length=size, label="flashing {} file(s)".format(len(changes.copy)),
                                       file=sys.stderr) as bar:
                    report = F.flash(b, plan, progress=bar.update, wait_s=boot_wait, changes=changes)
    except F.FlashError as e:
        raise click.ClickException(str(e)) from e
    for line in report.lines():
        click.echo(line)
    if dry_run:
        if report.restarted:
            click.echo("dry run: nothing written; the controller had to be stopped to read the board "
                       "(main.py holds the REPL) and was restarted by a soft reset: {}".format(report.running))
        else:
            click.echo("dry run: nothing written, the running controller was not interrupted")
        return
    if report.untouched:
        if report.restarted:
            click.echo("nothing changed: nothing written; the controller had to be stopped to read the "
                       "board and was restarted by a soft reset: {}".format(report.running))
        else:
            click.echo("nothing changed: nothing written, the running controller was not interrupted")
    else:
        click.echo("firmware {} for board {} imported on the board; {}".format(
            report.imported_version, report.board_name, report.running))
    if link_url:
        try:
            # nothing changed: whatever runs (the factory firmware or an installed update) stays
            expected = None if report.untouched else report.running_version or plan.version
            hello = F.confirm_link(link_url, expected)
        except F.FlashError as e:
            raise click.ClickException(str(e)) from e
        click.echo("host link: hello fw {} board {} cfg_hash {} boot {}".format(
            hello["fw"], hello["board"], hello["cfg_hash"], hello["boot_count"]))
    click.echo("flashed in {:.1f} s ({:,} bytes sent)".format(report.seconds, report.bytes_sent))
