"""`v2g api`: the driver's app and its REST API (OAuth 2.0 resource server) over the stations'
MQTT app channel; history in a store (SQLite by default)."""

import logging
import sys

import click

from host_tools.bridge import config as cfgdir


def _hostport(s):
    host, sep, port = s.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"{s!r} is not HOST:PORT (e.g. 127.0.0.1:8080)", param_hint="--listen")
    return host.strip("[]") or "127.0.0.1", int(port)


@click.command(name="api")
@click.option("--listen", default="127.0.0.1:8080", show_default=True, metavar="HOST:PORT",
              help="Where the API and the app are served (behind a TLS-terminating proxy in production).")
@click.option("--mqtt", "mqtt_url", required=True, metavar="URL",
              help="The stations' broker: mqtts://USER@HOST:8883 (password: mqtt_password in the config dir).")
@click.option("--issuer", required=True, metavar="URL", help="OAuth 2.0 / OpenID Connect provider (its issuer URL).")
@click.option("--audience", required=True, metavar="AUD", help="The `aud` access tokens must carry for this API.")
@click.option("--store", "store_url", default="sqlite:///var/lib/v2g/api.db", show_default=True, metavar="URL",
              help="History store: sqlite:///PATH (WAL, one machine) or postgresql://USER@HOST:PORT/DB (the fleet's sharded store, see v2g history).")
@click.option("--config-dir", default="/etc/v2g", show_default=True, type=click.Path(file_okay=False),
              help="Keys: app_jwt_key.pem or app_jwt.secret (command tokens), mqtt_password, mqtt_ca.pem, "
                   "oidc_ca.pem.")
@click.option("--client-id", default="v2g-app", show_default=True,
              help="The app's OAuth 2.0 client id at the provider (public client, PKCE).")
@click.option("--stations-claim", default="stations", show_default=True,
              help="Access-token claim listing the station ids a user may act on.")
@click.option("--share-group", default="v2g-api", show_default=True,
              help="MQTT shared-subscription group: the API workers split the history feed.")
@click.option("--command-timeout", type=click.FloatRange(0.5, 120), default=10, show_default=True,
              help="Seconds a command waits for the controller's result (then 504; the key may be sent again).")
@click.option("--idempotency-ttl", type=click.FloatRange(60, 30 * 86400), default=86400, show_default=True,
              help="Seconds an Idempotency-Key and its response are kept.")
@click.option("-v", "--verbose", is_flag=True)
def cli(listen, mqtt_url, issuer, audience, store_url, config_dir, client_id, stations_claim, share_group,
        command_timeout, idempotency_ttl, verbose):
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, port = _hostport(listen)
    try:
        cfgdir.check_config_dir(config_dir)
    except cfgdir.ConfigDirError as e:
        click.echo(f"v2g api: {e}", err=True)
        sys.exit(2)
    import uvicorn

    from host_tools.api.app import Settings, create_app
    from host_tools.api.auth import Verifier
    from host_tools.api.broker import BrokerLink
    from host_tools.api.cmdtoken import CommandSigner
    from host_tools.api.store import open_store
    try:
        signer = CommandSigner.from_config_dir(config_dir)
        store = open_store(store_url)
        broker = BrokerLink(mqtt_url, store, ca_file=cfgdir.file_or_none(config_dir, "mqtt_ca.pem"),
                            password=cfgdir.secret_text(config_dir, "mqtt_password"), group=share_group)
        verifier = Verifier(issuer, audience, stations_claim=stations_claim,
                            ca_file=cfgdir.file_or_none(config_dir, "oidc_ca.pem"))
    except (cfgdir.ConfigDirError, ValueError, OSError) as e:
        click.echo(f"v2g api: {e}", err=True)
        sys.exit(2)
    settings = Settings(issuer=issuer, audience=audience, client_id=client_id, command_timeout_s=command_timeout,
                        idem_ttl_s=idempotency_ttl)
    app = create_app(settings, verifier, broker, store, signer)
    click.echo(f"v2g api: http://{host}:{port}/ (docs /docs, OpenAPI /openapi.json)", err=True)
    # phones keep a connection between reads: 5 s (uvicorn's default) closes it under their feet
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, timeout_keep_alive=75)
