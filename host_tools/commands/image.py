"""`v2g image`: a factory image (MicroPython + our filesystem) for the production line."""

import click

from host_tools import flash, image
from host_tools.commands._checks import check_out_file


@click.command(name="image")
@click.option("--board", required=True, help="Board folder under boards/ with a flash map in board.json.")
@click.option("--base", "base_hex", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The board's MicroPython firmware as Intel HEX.")
@click.option("-o", "--out", "out_hex", required=True, type=click.Path(dir_okay=False),
              help="Factory image to write (Intel HEX).")
@click.option("--config", type=click.Path(dir_okay=False), help="v2g_vars.json to include (validated).")
@click.option("--pubkey", type=click.Path(dir_okay=False), help="Update public key (KEY.pub.pem).")
def cli(board, base_hex, out_hex, config, pubkey):
    """Merge the MicroPython .hex with a littlefs filesystem holding the compiled firmware,
    the settings and the update key, at the offset and geometry of the board's build. On a
    board with a ROMFS partition (pybd_sf6) the compiled firmware goes there as a ROMFS image
    instead (also written as OUT.romfs); settings and key are then installed with v2g flash.

    A base image with data in the filesystem region or the update partition is refused,
    with the addresses named.
    """
    check_out_file(out_hex, "-o / --out", (base_hex, config, pubkey))
    try:
        s = image.build(board, base_hex, out_hex, config=config, pubkey=pubkey)
    except (image.ImageError, flash.FlashError) as e:
        raise click.ClickException(str(e)) from e
    except OSError as e:
        raise click.ClickException("cannot write {}: {}".format(out_hex, e.strerror)) from None
    if "romfs_region" in s:
        lo, hi = s["romfs_region"]
        click.echo("{}: firmware {} for {}, {} modules in a {:,} B ROMFS image at 0x{:08X} (partition "
                   "0x{:08X}-0x{:08X}); the same image in {}".format(
                       out_hex, s["version"], s["board"], len(s["files"]), s["romfs_bytes"], lo, lo, hi - 1,
                       s["romfs_file"]))
        click.echo("not in the image (the read-write filesystem): {}, settings and update key: write them "
                   "with v2g flash after programming".format(", ".join(s["left_for_flash"])))
        return
    where = " + ".join("0x{:08X}-0x{:08X}".format(lo, hi - 1) for lo, hi in s["fs_regions"])
    click.echo("{}: firmware {} for {}, {} files ({:,} bytes) in a {} KiB littlefs at {}".format(
        out_hex, s["version"], s["board"], len(s["files"]), s["payload_bytes"], s["fs_bytes"] // 1024, where))
