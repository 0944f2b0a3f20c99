"""`v2g bridge`: the controller's host link <-> an OCPP CSMS and the app over MQTT 5."""

import asyncio
import json
import logging
import math
import signal
import sys

import click

from host_tools.bridge import config as cfgdir
from host_tools.bridge.backoff import Backoff
from host_tools.bridge.ocpp import check_station_id
from host_tools.bridge.service import Gateway, StateDirLocked
from host_tools.commands._checks import FiniteFloatRange, port_problem

BACKOFF_MAX_S = 3600.0


@click.command(name="bridge")
@click.option("--link", "link_url", metavar="PORT",
              help="Controller link: any pyserial URL (/dev/ttyACM0, a pseudo-terminal, socket://HOST:PORT).")
@click.option("--csms", "csms_url", required=True, metavar="URL",
              help="CSMS WebSocket URL (ws:// or wss://); the station id is appended.")
@click.option("--station-id", metavar="ID", help="Charging station identity towards the CSMS and on MQTT.")
@click.option("--site", "site_file", type=click.Path(exists=True, dir_okay=False),
              help="Serve many controllers: a JSON list of {\"station_id\": ..., \"link\": ...}.")
@click.option("--mqtt", "mqtt_url", metavar="URL", help="MQTT 5 broker for the app: mqtt://HOST:1883 or mqtts://HOST:8883.")
@click.option("--ocpp", "max_version", type=click.Choice(["1.6", "2.0.1", "2.1"]), default="2.1", show_default=True,
              help="Highest OCPP version offered; the lower ones down to 1.6 are offered too and the CSMS "
                   "picks (1.6: 1.6 only, charging only).")
@click.option("--security-profile", type=click.IntRange(0, 3), default=None,
              help="OCPP security profile (1 ws+Basic, 2 wss+Basic, 3 wss+client cert; 0 none, testing only). "
                   "Default: guessed from the URL and the files in the config directory.")
@click.option("--config-dir", default="/etc/v2g", show_default=True, type=click.Path(file_okay=False),
              help="Settings and keys (see docs/bridge.md); must not be writable by others.")
@click.option("--log-dir", type=click.Path(file_okay=False), default=None,
              help="Where central_system.log goes. Default /var/log/v2g, else the user's state directory.")
@click.option("--state-dir", type=click.Path(file_okay=False), default=None,
              help="Offline queue and transaction state. Default /var/lib/v2g, else the user's state directory.")
@click.option("--meter-interval", type=FiniteFloatRange(1, 3600), default=60, show_default=True,
              help="Seconds between meter values in a running transaction.")
@click.option("--tel-batch", type=click.IntRange(1, 100), default=5, show_default=True,
              help="Telemetry samples per MQTT message.")
@click.option("--retry-backoff", default="3,10,5", show_default=True, metavar="MIN,RANGE,REPEAT",
              help="CSMS reconnect back-off (OCPP RetryBackOffWaitMinimum, RandomRange, RepeatTimes), seconds.")
@click.option("--handshake-timeout", type=FiniteFloatRange(0.5, 120), default=10, show_default=True,
              help="Seconds allowed for the CSMS WebSocket and the controller hello handshakes.")
@click.option("--allow-file-updates", is_flag=True,
              help="Accept file:// firmware locations in UpdateFirmware (a lab or a local mirror); "
                   "otherwise only http(s).")
@click.option("--gateway-id", metavar="ID", default=None,
              help="This gateway's name on MQTT (v2g/_gateway/ID/status, the Will of a site gateway). "
                   "Default: the host name.")
@click.option("--local-link", "local_link", type=click.IntRange(0, 65535), default=None, metavar="PORT",
              help="Share the controller's link with local tools (v2g fota, diag, console) on "
                   "socket://127.0.0.1:PORT; 0 picks a free port, printed at start. One controller only.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging on stderr.")
def cli(link_url, csms_url, station_id, site_file, mqtt_url, max_version, security_profile, config_dir,
        log_dir, state_dir, meter_interval, tel_batch, retry_backoff, handshake_timeout, allow_file_updates,
        gateway_id, local_link, verbose):
    """Bridge a controller (or a site's controllers) to a CSMS over OCPP 1.6J/2.0.1/2.1 and to the app over MQTT 5.

    Runs until SIGTERM or Ctrl-C. Events go to central_system.log in the log directory.
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if site_file:
        if link_url or station_id:
            raise click.UsageError("--site names every controller and its link: give it without --link "
                                   "and --station-id")
        try:
            site = json.loads(open(site_file, encoding="utf-8").read())
            if not isinstance(site, list):
                raise TypeError("not a list")
            stations = []
            for i, e in enumerate(site):
                if not isinstance(e, dict) or not isinstance(e.get("station_id"), str) \
                        or not isinstance(e.get("link"), str):
                    raise TypeError(f"entry {i} is not {{\"station_id\": TEXT, \"link\": TEXT}}")
                stations.append((e["station_id"], e["link"]))
        except (ValueError, TypeError) as e:
            raise click.ClickException(f"{site_file}: expected a JSON list of {{station_id, link}}: {e}") from e
        if not stations:
            raise click.ClickException(f"{site_file}: the site lists no controllers; nothing to serve")
    elif link_url and station_id:
        stations = [(station_id, link_url)]
    else:
        raise click.UsageError("give --link and --station-id (or --site FILE)")
    if local_link is not None and len(stations) > 1:
        raise click.UsageError("--local-link shares one controller's link: use it with --link, not a site "
                               "of several controllers")
    for sid, link in stations:
        why = port_problem(link)
        # a device not there yet (a USB adapter still enumerating) is waited for, like a lost one
        if why is not None and why != "no such device":
            raise click.ClickException(f"controller link {link!r} of {sid}: {why}")
    seen = set()
    for sid, _ in stations:
        try:
            check_station_id(sid)
        except ValueError as e:
            raise click.ClickException(str(e)) from e
        if sid in seen:
            raise click.ClickException(f"station id {sid!r} is given twice: each controller needs its own id")
        seen.add(sid)
    try:
        bmin, brange, brep = (float(x) for x in retry_backoff.split(","))
        if not all(math.isfinite(v) for v in (bmin, brange, brep)):
            raise ValueError("values must be finite")
        if bmin <= 0 or brange < 0 or brep < 0 or brep != int(brep):
            raise ValueError("MIN must be > 0, RANGE >= 0, REPEAT a whole number >= 0")
        if brep > 20 or bmin * 2 ** brep > BACKOFF_MAX_S or brange > BACKOFF_MAX_S:
            raise ValueError(f"the longest wait MIN x 2^REPEAT and RANGE must each be at most "
                             f"{BACKOFF_MAX_S:g} s (REPEAT at most 20)")
        Backoff(bmin, brange, int(brep))
    except ValueError as e:
        raise click.BadParameter(f"{retry_backoff!r}: expected MIN,RANGE,REPEAT ({e})",
                                 param_hint="--retry-backoff") from e
    try:
        gw = Gateway(stations, csms_url=csms_url, config_dir=config_dir,
                     log_dir=log_dir or cfgdir.default_log_dir(), state_dir=state_dir or cfgdir.default_state_dir(),
                     mqtt_url=mqtt_url, max_version=max_version, security_profile=security_profile,
                     meter_interval_s=meter_interval, tel_batch=tel_batch,
                     backoff=lambda: Backoff(bmin, brange, int(brep)), handshake_timeout_s=handshake_timeout,
                     allow_file_updates=allow_file_updates, gateway_id=gateway_id, local_link_port=local_link)
    except (cfgdir.ConfigDirError, StateDirLocked, ValueError, OSError) as e:
        raise click.ClickException(str(e)) from e
    if gw.local_link is not None:
        # the port chosen (0 asks for a free one): where local tools connect
        click.echo(f"local link: {gw.local_link.url}", nl=True)
        sys.stdout.flush()
    try:
        asyncio.run(_serve(gw))
    finally:
        gw.close()
    sys.exit(0)


async def _serve(gw):
    # SIGTERM (systemd stop) ends the run cleanly: the app sees "offline" on the status topic
    task = asyncio.ensure_future(gw.run())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        pass


if __name__ == "__main__":
    cli()
