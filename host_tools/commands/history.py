"""`v2g history`: the fleet's history store on PostgreSQL (sharded by station) for operators:
migrate, maintain, register stations, run ingest workers, stats, export."""

import csv
import json
import logging
import sys

import click

STORE_HELP = "The coordinator: postgresql://USER[:PASSWORD]@HOST:PORT/DB (password also from PGPASSWORD)."


def _pg(url):
    if not url.startswith(("postgresql://", "postgres://")):
        raise click.BadParameter(f"{url!r} is not a postgresql:// URL", param_hint="--store")
    return url


@click.group(name="history")
def cli():
    """The fleet's history store: PostgreSQL, sharded by station (docs/fleet.md)."""


@cli.command()
@click.option("--store", "store_url", required=True, help=STORE_HELP)
@click.option("--shard", "shards", multiple=True, metavar="URL",
              help="A shard instance (postgresql://...), once per shard; needed only when the fleet is new.")
@click.option("--buckets", type=click.IntRange(1, 1024), default=None,
              help="Hash buckets (default: one per shard; more leave room to add shards by moving buckets).")
@click.option("--retention-days", type=click.IntRange(1, 3650), default=None,
              help="Day partitions older than this are dropped (default 30).")
def migrate(store_url, shards, buckets, retention_days):
    """Apply the schema migrations not yet applied, then the day-partition upkeep."""
    from host_tools.history import pg
    settings = {} if retention_days is None else {"retention_days": retention_days}
    try:
        v = pg.migrate(_pg(store_url), shards, buckets=buckets, settings=settings, log=click.echo)
    except (ValueError, pg.psycopg.Error) as e:
        raise click.ClickException(str(e).splitlines()[0]) from None
    click.echo(f"schema version {v}")


@cli.command()
@click.option("--store", "store_url", required=True, help=STORE_HELP)
def maintain(store_url):
    """Day partitions: make the coming days', drop those past retention (run daily)."""
    from host_tools.history import pg
    with pg.connect(_pg(store_url)) as coord:
        pg.maintain(coord, log=click.echo)


@cli.command()
@click.option("--store", "store_url", required=True, help=STORE_HELP)
@click.argument("csv_file", type=click.File("r"))
def register(store_url, csv_file):
    """Register stations from a CSV of `station,region` (the ingest refuses unknown stations)."""
    from host_tools.history import pg
    rows = []
    for i, row in enumerate(csv.reader(csv_file), 1):
        if not row or row[0].startswith("#") or row[0] == "station":
            continue
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise click.ClickException(f"{csv_file.name} line {i}: expected `station,region`, got {row!r}")
        rows.append((row[0].strip(), row[1].strip()))
    st = pg.PgStore(_pg(store_url))
    st.register(rows)
    click.echo(f"{len(rows)} stations registered")


@cli.command()
@click.option("--store", "store_url", required=True, help=STORE_HELP)
@click.option("--mqtt", "mqtt_url", required=True, help="This zone's broker: mqtt://[USER:PASS@]HOST:PORT, or over TLS "
              "mqtts://USER:PASS@HOST:8883[?cafile=CA.pem] (the shipped broker).")
@click.option("--id", "client_id", default=None, help="MQTT client id; keep it stable across restarts "
              "(the persistent session holds this worker's share while it is away).")
@click.option("--group", default="v2g-history", show_default=True, help="Shared-subscription group.")
@click.option("--receive-max", type=click.IntRange(10, 65535), default=2000, show_default=True,
              help="Messages in flight to this worker (bounds what it holds while a shard is away).")
@click.option("--batch-rows", type=click.IntRange(1, 100000), default=5000, show_default=True)
@click.option("--stats-file", type=click.Path(dir_okay=False), default=None,
              help="Write the worker's counters and lag here (JSON) every second.")
def ingest(store_url, mqtt_url, client_id, group, receive_max, batch_rows, stats_file):
    """Move telemetry and events from MQTT into the store (run N of these)."""
    from host_tools.history import ingest as ing
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        snap = ing.run(_pg(store_url), mqtt_url, client_id=client_id, group=group, receive_max=receive_max,
                       batch_rows=batch_rows, stats_file=stats_file)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    click.echo(json.dumps(snap))


@cli.command()
@click.option("--store", "store_url", required=True, help=STORE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable.")
def stats(store_url, as_json):
    """Rows per shard and bucket, newest sample and its lag."""
    from host_tools.history import pg
    rows = pg.PgStore(_pg(store_url)).stats()
    if as_json:
        click.echo(json.dumps(rows))
        return
    click.echo(f"{'shard':>5} {'bucket':>6} {'samples':>10} {'events':>8} {'sessions':>8} {'lag s':>8}  dsn")
    for r in rows:
        if not r["up"]:
            click.echo(f"{r['shard']:>5} {r['bucket']:>6} {'DOWN':>10}  {r['dsn']}: {r['error']}")
            continue
        lag = "-" if r["lag_ms"] is None else f"{r['lag_ms'] / 1000:.1f}"
        click.echo(f"{r['shard']:>5} {r['bucket']:>6} {r['samples']:>10} {r['events']:>8} {r['sessions']:>8} "
                   f"{lag:>8}  {r['dsn']}")


@cli.command()
@click.option("--store", "store_url", required=True, help=STORE_HELP)
@click.argument("station")
def export(store_url, station):
    """A station's sessions as CSV on stdout."""
    from host_tools.history import pg
    rows = pg.PgStore(_pg(store_url)).export_sessions(station)
    cols = ["start", "end", "last_seen", "energy_in_wh", "energy_out_wh", "soc_start_pct", "soc_end_pct",
            "soc_min_pct", "peak_discharge_w"]
    w = csv.DictWriter(sys.stdout, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(r)


@cli.command(name="prepare-shard")
@click.option("--store", "store_url", required=True, help=STORE_HELP)
@click.option("--shard", "shard_url", required=True, metavar="URL", help="The new shard instance.")
@click.option("--bucket", "buckets", type=click.IntRange(0, 1023), multiple=True, required=True,
              help="A bucket that will move there (repeat).")
def prepare_shard(store_url, shard_url, buckets):
    """Make empty bucket tables (day partitions, session trigger) on a new shard, before the
    buckets' rows are copied there (docs/fleet.md, adding a shard)."""
    from host_tools.history import pg
    from host_tools.history import schema as S
    with pg.connect(_pg(store_url)) as coord:
        st = pg.settings_of(coord.cursor())
        have = {b for _s, _d, b in pg._layout(coord.cursor())}
    bad = sorted(set(buckets) - have)
    if bad:
        raise click.ClickException(f"bucket(s) {bad} not in this fleet (it has 0..{len(have) - 1})")
    with pg.connect(shard_url) as sh, sh.cursor() as cur:
        for b in buckets:
            S.shard_bucket_ddl(cur, b)
            S.shard_days(cur, b, S.day_of(pg.now_ms()), st["retention_days"], st["premake_days"])
    click.echo(f"bucket tables ready on the new shard: {', '.join(map(str, buckets))}")
