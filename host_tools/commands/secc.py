"""`v2g secc`: ISO 15118-20 for one EVSE, the controller deciding every limit (docs/secc.md)."""

import asyncio
from pathlib import Path

import click

from host_tools.commands._checks import port_problem


@click.command(name="secc", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--iface", required=True, help="The PLC modem's network interface (needs an IPv6 link-local address).")
@click.option("--link", required=True, help="The controller: its host-link port, or the bridge's local link (socket://127.0.0.1:PORT).")
@click.option("--config-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("/etc/v2g"),
              show_default=True, help="Holds secc_chain.pem, secc_key.pem, v2g_root.pem (and oem_root.pem).")
@click.option("--log-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="central_system.log, secc_events.jsonl, secc_worker.log (default: as the bridge's).")
@click.option("--tls/--no-tls", default=True, show_default=True, help="TLS 1.3 (ISO 15118-20 requires it).")
@click.option("--port", type=click.IntRange(1, 65535), default=8081, show_default=True, help="TCP port of the SECC.")
@click.option("--station-id", default="-", help="Station id for the log lines.")
@click.option("--setup-timeout", type=click.FloatRange(1, 600), default=20.0, show_default=True,
              help="Seconds from 5 % duty to the first ISO 15118 message before basic charging (V2G-150).")
def cli(iface, link, config_dir, log_dir, tls, port, station_id, setup_timeout):
    """Offer AC_BPT, DC_BPT, AC and DC (Scheduled and Dynamic, EIM) to the vehicle over
    ISO 15118-20, with the controller's present limits."""
    from host_tools.secc import gateway, pki

    if not Path("/sys/class/net", iface).exists():
        raise click.ClickException(f"--iface {iface}: no such network interface")
    why = port_problem(link)
    if why:
        raise click.ClickException(f"--link {link}: cannot open it: {why}")
    if tls:
        try:
            leaf = pki.check(config_dir)
        except pki.PkiError as e:
            raise click.ClickException(f"refusing to start: {e}") from e
        click.echo(f"SECC certificate: {leaf}", err=True)
    try:
        gateway.worker_python()
    except FileNotFoundError as e:
        raise click.ClickException(str(e)) from e
    if log_dir is None:
        from host_tools.bridge.config import default_log_dir
        log_dir = default_log_dir()
    s = gateway.Secc(link, iface, port, tls=tls, pki_dir=config_dir, log_dir=log_dir, station=station_id,
                     setup_timeout=setup_timeout)
    try:
        asyncio.run(s.run())
    except KeyboardInterrupt:
        pass
