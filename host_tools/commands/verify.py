"""`v2g verify`: check a signed firmware update bundle."""

import json
from pathlib import Path

import click

from signing import bundle, keys


@click.command(name="verify")
@click.option("--key", "key_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Public key (KEY.pub.pem) the bundle must be signed with.")
@click.option("--board", default=None, help="Also require this board class.")
@click.option("--after-seq", type=click.IntRange(0, bundle.MAX_U32), default=None,
              help="Also require a sequence above this one (the installed sequence).")
@click.option("--min-security-counter", type=click.IntRange(0, bundle.MAX_U32), default=None,
              help="Also require a security counter at or above this one.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@click.argument("bundle_path", metavar="BUNDLE", type=click.Path(exists=True, dir_okay=False))
def cli(key_path, board, after_seq, min_security_counter, as_json, bundle_path):
    """Check BUNDLE: signature, manifest and every component digest.

    Exits 0 only when all hold; otherwise prints the first check that failed
    (header, truncated, cbor, cose, alg, kid, signature, manifest, board, rollback,
    size, digest, trailing) and exits 1.
    """
    try:
        pub = keys.load_public(key_path)
    except keys.KeyFileError as e:
        raise click.ClickException(str(e)) from None
    data = Path(bundle_path).read_bytes()
    try:
        man = bundle.verify(data, pub, board=board, stored_seq=after_seq,
                            stored_security_counter=min_security_counter)
    except bundle.BundleError as e:
        if as_json:
            click.echo(json.dumps({"ok": False, "failed": e.what, "error": str(e)}))
        else:
            click.echo("FAILED {}".format(e), err=True)
        raise SystemExit(1) from None
    except ValueError as e:  # a bad --board name
        raise click.BadParameter(str(e), param_hint="--board") from None
    if as_json:
        click.echo(json.dumps(dict(man, ok=True)))
        return
    click.echo("OK {}: {} {}, seq {}, security counter {}, board {}, kid {}".format(
        bundle_path, man["alg"], man["version"], man["sequence"], man["security_counter"],
        man["board"] or man["board_class_id"], man["kid"]))
    for c in man["components"]:
        click.echo("  {:<40} {:>8} bytes  sha256 {}".format(c["name"], c["size"], c["sha256"]))
