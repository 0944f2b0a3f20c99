"""ROMFS images: the compiled firmware as a read-only filesystem MicroPython runs in place.

MicroPython 1.25 and later mount a ROMFS partition at /rom (boards whose build has one, such
as PYBD-SF2/SF6) and import `.mpy` files from it without copying their bytecode into the
heap. The image is what `mpremote romfs build` writes; it is built here with mpremote's own
writer (`mpremote.romfs.VfsRomWriter`, a pinned dependency) from the files `v2g flash` has
already compiled, so the modules in the partition are byte for byte the ones it would copy.

    image = romfs.build({"core/pilot.mpy": b"...", "app/run.mpy": b"..."})
    files = romfs.read(image)      # {path: bytes}, for v2g image's read-back

Format (MicroPython's extmod/vfs_rom.c): the header b"\\xd2\\xcd\\x31" then the length of the
rest as a big-endian base-128 varint, then records, each `kind` varint, `length` varint,
payload. A directory's payload is its name (length-prefixed) and its records; a file's is its
name and a data record (verbatim bytes).
"""

from mpremote.romfs import VfsRomWriter

HEADER = VfsRomWriter.ROMFS_HEADER
KIND_PADDING = VfsRomWriter.ROMFS_RECORD_KIND_PADDING
KIND_DATA = VfsRomWriter.ROMFS_RECORD_KIND_DATA_VERBATIM
KIND_DIR = VfsRomWriter.ROMFS_RECORD_KIND_DIRECTORY
KIND_FILE = VfsRomWriter.ROMFS_RECORD_KIND_FILE


class RomfsError(ValueError):
    """The bytes are not a ROMFS image this reader understands; the message says where."""


def _tree(files):
    root = {}
    for path, data in files.items():
        parts = path.split("/")
        node = root
        for d in parts[:-1]:
            node = node.setdefault(d, {})
            if not isinstance(node, dict):
                raise RomfsError("{} is both a file and a folder".format(d))
        node[parts[-1]] = bytes(data)
    return root


def _write(writer, node):
    for name in sorted(node):
        if isinstance(node[name], dict):
            writer.opendir(name)
            _write(writer, node[name])
            writer.closedir()
        else:
            writer.mkfile(name, node[name])


def build(files):
    """The ROMFS image (bytes) holding files ({path: bytes}, '/'-separated paths)."""
    writer = VfsRomWriter()
    _write(writer, _tree(files))
    return writer.finalise()


def _uint(buf, pos, end):
    value = 0
    while True:
        if pos >= end:
            raise RomfsError("varint runs past its record at offset {}".format(pos))
        b = buf[pos]
        pos += 1
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            return value, pos


def size(image):
    """Bytes the image takes (header included), or None if it does not start with the header."""
    if bytes(image[:3]) != HEADER:
        return None
    n, pos = _uint(image, 3, min(len(image), 3 + 8))
    return pos + n


def _records(buf, pos, end, prefix, out):
    while pos < end:
        kind, pos = _uint(buf, pos, end)
        length, pos = _uint(buf, pos, end)
        stop = pos + length
        if stop > end:
            raise RomfsError("record at offset {} runs past its folder".format(pos))
        if kind in (KIND_DIR, KIND_FILE):
            nlen, p = _uint(buf, pos, stop)
            name = bytes(buf[p:p + nlen]).decode()
            p += nlen
            if kind == KIND_DIR:
                _records(buf, p, stop, prefix + name + "/", out)
            else:
                k, p = _uint(buf, p, stop)
                n, p = _uint(buf, p, stop)
                if k != KIND_DATA:
                    raise RomfsError("file {} is not stored verbatim (kind {})".format(prefix + name, k))
                out[prefix + name] = bytes(buf[p:p + n])
        elif kind != KIND_PADDING:
            raise RomfsError("unknown record kind {} at offset {}".format(kind, pos))
        pos = stop
    return out


def read(image):
    """{path: bytes} of every file in a ROMFS image (bytes may continue after it)."""
    total = size(image)
    if total is None:
        raise RomfsError("not a ROMFS image (no {} header)".format(HEADER.hex()))
    if total > len(image):
        raise RomfsError("the image says {} bytes, only {} are there".format(total, len(image)))
    _, pos = _uint(image, 3, total)
    return _records(image, pos, total, "", {})
