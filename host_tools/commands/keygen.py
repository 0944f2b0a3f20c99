"""`v2g keygen`: make an update-signing key pair."""

from pathlib import Path

import click

from host_tools.commands._checks import check_out_file
from signing import keys


def read_passphrase(path):
    """The passphrase: the whole file as bytes, less its trailing line break(s); None when
    path is None. A line break inside is refused, so a file of several lines is never taken
    for its first line only (or for all of them) by surprise."""
    if path is None:
        return None
    data = Path(path).read_bytes().rstrip(b"\r\n")
    if not data:
        raise click.BadParameter("{} is empty".format(path), param_hint="--passphrase-file")
    if b"\n" in data or b"\r" in data:
        raise click.BadParameter("{} holds more than one line; the passphrase is the whole file, "
                                 "one line".format(path), param_hint="--passphrase-file")
    return data


@click.command(name="keygen")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="Private key file to write (PEM); the public key goes beside it as KEY.pub.pem.")
@click.option("--alg", type=click.Choice(keys.ALGORITHMS), default=keys.ES256, show_default=True,
              help="es256 = ECDSA P-256 (the controller verifies these); ed25519 = EdDSA (host-side only).")
@click.option("--passphrase-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Encrypt the private key with the passphrase in this file: the whole file, one line "
                   "(a trailing line break is dropped).")
@click.option("--force", is_flag=True, help="Overwrite existing key files.")
def cli(out, alg, passphrase_file, force):
    """Generate a key pair for signing firmware update bundles.

    Writes the private key (PKCS#8 PEM, mode 0600, encrypted when a passphrase file is
    given) and the public key (SubjectPublicKeyInfo PEM) as KEY.pub.pem. Prints the key
    id: the first 8 bytes of SHA-256 over the public key's DER, carried as the COSE kid.
    The controller is provisioned with the public key only.
    """
    # --force must never turn the passphrase file into the key that needs it
    check_out_file(out, "--out", (passphrase_file,))
    check_out_file(str(keys.public_path(out)), "--out (its KEY.pub.pem)", (passphrase_file,))
    passphrase = read_passphrase(passphrase_file)
    try:
        priv, pub, key = keys.write_keypair(out, alg, passphrase, force=force)
    except keys.KeyFileError as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:
        raise click.ClickException("cannot write {}: {}".format(out, e.strerror)) from None
    click.echo("private key {} ({}{})".format(priv, alg, ", encrypted" if passphrase else ", NOT encrypted"))
    click.echo("public key  {}".format(pub))
    click.echo("key id      {}".format(keys.key_id(key).hex()))
    if alg == keys.ED25519:
        click.echo("warning: the controller verifies ES256 only; bundles signed with this key are "
                   "refused there (V2G-601 alg)", err=True)
