"""`v2g fota`: push a signed update bundle to a controller over the host link."""

import json
from pathlib import Path

import click

from host_tools import fota
from host_tools.commands._checks import check_port
from host_tools.link import LinkClient, LinkError


@click.command(name="fota")
@click.option("--port", required=True, help="The controller's host link (serial device or pyserial URL).")
@click.option("--baud", type=click.IntRange(50, 4000000), default=115200, show_default=True, help="Line rate of the link.")
@click.option("--window", type=click.IntRange(1, 16), default=fota.DEFAULT_WINDOW, show_default=True,
              help="Chunks in flight before waiting for their results.")
@click.option("--tries", type=click.IntRange(1, 5), default=None,
              help="Trial boots before the controller reverts (controller default 3).")
@click.option("--trial-s", type=click.IntRange(5, 600), default=None,
              help="Seconds the new firmware has to pass its health check (controller default 120).")
@click.option("--no-reboot", is_flag=True, help="Stage and mark pending only; the next reset runs it.")
@click.option("--json", "as_json", is_flag=True, help="Print the final report as one JSON object.")
@click.argument("bundle_path", metavar="BUNDLE", type=click.Path(exists=True, dir_okay=False))
def cli(port, baud, window, tries, trial_s, no_reboot, as_json, bundle_path):
    """Send BUNDLE to the controller, resuming a download it already holds, then reboot it
    into the new firmware on trial and report the version it runs once confirmed.

    Exits 1 when the controller refuses the bundle (V2G-601 signature, manifest, board or
    digest; V2G-602 rollback), stops answering, or reverts the new firmware (V2G-603); the
    firmware it ran before is then still running.
    """
    data = Path(bundle_path).read_bytes()
    try:
        fota.bundle_id(data)
    except fota.FotaError as e:
        if as_json:
            _fail(True, "{}: {}".format(bundle_path, e), e.code)
        raise click.ClickException("{}: {}".format(bundle_path, e)) from None
    check_port(port, "--port")
    try:
        with LinkClient(port, baudrate=baud) as client:
            rep = _run(client, data, window, tries, trial_s, not no_reboot, as_json)
    except fota.FotaError as e:
        _fail(as_json, str(e), e.code)
    except LinkError as e:
        _fail(as_json, "link: {}".format(e), None)
    if as_json:
        click.echo(json.dumps(dict(rep.as_dict(), ok=True)))
        return
    if rep.resumed_from:
        click.echo("resumed at byte {} of {}".format(rep.resumed_from, rep.size))
    rate = (rep.size - rep.resumed_from) / rep.transfer_s if rep.transfer_s else 0
    click.echo("sent {} bytes in {:.1f} s ({:.0f} B/s, {} frames, {} go-backs)".format(
        rep.size - rep.resumed_from, rep.transfer_s, rate, rep.frames, rep.go_backs))
    if no_reboot:
        click.echo("slot {} holds {}, pending: it runs on trial at the next reset".format(rep.slot, rep.version))
    else:
        click.echo("running {} from slot {} (confirmed)".format(rep.running.get("version"),
                                                                rep.running.get("running")))


def _run(client, data, window, tries, trial_s, reboot, as_json):
    if as_json:
        return fota.push(client, data, window=window, reboot=reboot, tries=tries, trial_s=trial_s)
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn()) as bar:
        task = bar.add_task("update", total=len(data))

        def progress(done, total):
            bar.update(task, completed=done)
        rep = fota.transfer(client, data, window=window, progress=progress)
    hello = []
    unsubscribe = client.subscribe("hello", hello.append)
    try:
        done = fota.finish(client, reboot=reboot, tries=tries, trial_s=trial_s)
        rep.slot, rep.version = done.get("slot"), done.get("version")
        if reboot:
            click.echo("slot {} holds {}; rebooting into it on trial...".format(rep.slot, rep.version))
            rep.running = fota.wait_trial_end(client)
            if rep.running.get("active") != rep.slot:
                raise fota.FotaError("slot {} failed its trial; the controller runs {} again".format(
                    rep.slot, rep.running.get("version")), "V2G-603")
    finally:
        unsubscribe()
    return rep


def _fail(as_json, msg, code):
    if as_json:
        click.echo(json.dumps({"ok": False, "code": code, "error": msg}))
    else:
        click.echo("FAILED{}: {}".format(" " + code if code else "", msg), err=True)
    raise SystemExit(1)
