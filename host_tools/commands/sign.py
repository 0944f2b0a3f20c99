"""`v2g sign`: make a signed firmware update bundle."""

from pathlib import Path

import click

from host_tools import flash
from host_tools.commands._checks import check_out_file
from host_tools.commands.keygen import read_passphrase
from signing import bundle, keys

ED25519_WARNING = ("warning: an EdDSA (Ed25519) bundle. The controller verifies ES256 only (it has no "
                   "SHA-512) and refuses it with V2G-601 alg; `v2g verify` and other COSE tools accept it.")


def update_partition(board):
    """(start, size) of the board's update partition from boards/<board>/board.json, or None
    when the board has no board.json or it names no partition."""
    try:
        part = flash.load_board(board).get("update_partition") or {}
        return flash.int_of(part["start"]), flash.int_of(part["size"])
    except (flash.FlashError, KeyError, ValueError, TypeError, AttributeError):
        return None


def romfs_partitions(board):
    """The board's ROMFS partitions from board.json ("romfs": "partitions"), [] without."""
    try:
        rom = flash.load_board(board).get("romfs") or {}
    except flash.FlashError:
        return []
    return [(flash.int_of(p["start"]), flash.int_of(p["size"])) for p in rom.get("partitions") or []]


def _address(_ctx, _param, value):
    if value is None:
        return None
    try:
        addr = int(value, 0)
    except ValueError:
        raise click.BadParameter("{!r} is not a number (use 0x08080000 or 134742016)".format(value)) from None
    if addr < 0 or addr > 0xFFFFFFFF:
        raise click.BadParameter("0x{:X} is outside the 32-bit address space".format(addr))
    return addr


def component_name(path, root):
    p = Path(path)
    if root is None:
        return p.name
    try:
        return p.resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        raise click.BadParameter("{} is not under --root {}".format(path, root), param_hint="FILE") from None


@click.command(name="sign")
@click.option("--key", "key_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Private signing key (PEM) made by `v2g keygen`.")
@click.option("--passphrase-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="File holding the private key's passphrase.")
@click.option("--seq", type=click.IntRange(1, bundle.MAX_U32), required=True,
              help="Sequence number; the controller installs only a sequence above its current one.")
@click.option("--version", "version", required=True, help="Human version string, e.g. 1.4.0 (1-32 ASCII).")
@click.option("--board", required=True, help="Board class the bundle is for, e.g. pyboard or sim.")
@click.option("--security-counter", type=click.IntRange(0, bundle.MAX_U32), default=0, show_default=True,
              help="Raise it to forbid going back below this release (never lowered by the controller).")
@click.option("--root", type=click.Path(exists=True, file_okay=False), default=None,
              help="Name components by their path below this folder (default: the file name).")
@click.option("-o", "--out", "out", required=True, type=click.Path(dir_okay=False), help="Bundle file to write.")
@click.option("--hex-address", callback=_address, default=None,
              help="Also write the bundle as Intel HEX placed at this address (the update partition); "
                   "to BUNDLE.hex beside the bundle unless --hex-out is given.")
@click.option("--hex-out", type=click.Path(dir_okay=False), default=None,
              help="Intel HEX file to write; without --hex-address it is placed at the board's update "
                   "partition (board.json).")
@click.option("--romfs/--no-romfs", "as_romfs", default=None,
              help="Sign a ROMFS image as the one component romfs.img, for a board that runs its "
                   "firmware from two ROMFS partitions (board.json romfs.partitions, e.g. pybd_sf6; the "
                   "controller writes it into the partition not running). The default for such a board. "
                   "Without FILE the image is built from the working tree's firmware as `v2g flash` "
                   "builds it; with one FILE, that file is the image. --no-romfs signs FILE... for slot "
                   "folders (a PYBD on MicroPython's stock build, which has one partition).")
@click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False))
def cli(key_path, passphrase_file, seq, version, board, security_counter, root, out, hex_address, hex_out,
        as_romfs, files):
    """Sign FILE... into one update bundle for BOARD.

    The bundle is a COSE_Sign1 (ES256 or EdDSA, by the key) over a manifest of the
    components (name, size, SHA-256), sequence, security counter, vendor and board
    class, followed by the component bytes in the order given. See
    docs/signed-updates.md for the layout.

    For a board with two ROMFS partitions (pybd_sf6) the bundle holds one ROMFS image
    instead (--romfs, the default there): FILE is that image, or none to build it.
    """
    parts = romfs_partitions(board)
    if as_romfs is None:
        as_romfs = len(parts) >= 2
    if as_romfs and len(parts) < 2:
        raise click.UsageError("--romfs: board {} lists no two ROMFS partitions in board.json "
                               "(romfs.partitions)".format(board))
    if as_romfs and len(files) > 1:
        raise click.UsageError("--romfs takes one FILE (the ROMFS image) or none (built from the "
                               "firmware tree), not {}".format(len(files)))
    if not as_romfs and not files:
        raise click.UsageError("Missing argument 'FILES...'.")
    part = update_partition(board)
    if hex_out is not None and hex_address is None:
        if part is None:
            raise click.UsageError("--hex-out needs --hex-address: board {} names no update partition "
                                   "in board.json".format(board))
        hex_address = part[0]
    if hex_address is not None and hex_out is None:
        hex_out = str(Path(out).with_suffix(".hex"))
        if Path(hex_out) == Path(out):
            raise click.UsageError("-o {} ends in .hex: give the Intel HEX file with --hex-out".format(out))
    # before the key is read: a bundle over one of its own inputs would destroy it
    inputs = (key_path, passphrase_file, *files)
    check_out_file(out, "-o / --out", inputs)
    check_out_file(hex_out, "--hex-out", inputs + (out,))
    try:
        key = keys.load_private(key_path, read_passphrase(passphrase_file))
    except keys.KeyFileError as e:
        raise click.ClickException(str(e)) from None
    if as_romfs:
        try:
            image = Path(files[0]).read_bytes() if files else flash.prepare(board).romfs
        except flash.FlashError as e:
            raise click.ClickException(str(e)) from None
        components = [(bundle.ROMFS_COMPONENT, image)]
    else:
        components = [(component_name(f, root), Path(f).read_bytes()) for f in files]
    try:
        if as_romfs:
            data = bundle.sign_romfs(key, image, seq, version, board, security_counter,
                                     min(size for _, size in parts))
        else:
            data = bundle.sign(key, components, seq, version, board, security_counter)
        hex_text = bundle.to_intelhex(data, hex_address) if hex_out else None
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    if hex_out and part is not None:
        start, size = part
        if not start <= hex_address < start + size:
            raise click.ClickException("--hex-address 0x{:08X} is outside board {}'s update partition "
                                       "0x{:08X}-0x{:08X} (board.json)".format(hex_address, board, start,
                                                                               start + size))
        if hex_address + len(data) > start + size:
            raise click.ClickException("bundle of {} bytes at 0x{:08X} does not fit board {}'s update "
                                       "partition: {} bytes from there (board.json)".format(
                                           len(data), hex_address, board, start + size - hex_address))
    try:
        Path(out).write_bytes(data)
        if hex_out:
            Path(hex_out).write_text(hex_text)
    except OSError as e:
        raise click.ClickException("cannot write {}: {}".format(e.filename, e.strerror)) from None
    click.echo("signed {}: {} bytes, {} component(s), seq {}, security counter {}, board {}, kid {}".format(
        out, len(data), len(components), seq, security_counter, board, keys.key_id(key).hex()))
    if hex_out:
        click.echo("intel hex {} at 0x{:08X}".format(hex_out, hex_address))
    if keys.algorithm(key) == keys.ED25519:
        click.echo(ED25519_WARNING, err=True)
