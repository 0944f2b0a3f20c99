"""Signed update bundles on the controller: header, manifest, policy, digests.

A bundle is  b"V2GB" | u32 BE length N | COSE_Sign1 (N bytes) | component bytes
(docs/signed-updates.md). The installer reads the header and the COSE_Sign1
first, calls open_manifest() and check(), and only then streams the component
bytes through BodyCheck while writing them to the inactive slot. Every refusal
is an UpdateError carrying the station error code:
- V2G-601: header, CBOR, COSE, signature, manifest field, vendor, board, size,
  truncation, trailing bytes or digest;
- V2G-602: rollback (sequence not newer, or security counter lower).
Safe state on any refusal: nothing installed, the running firmware untouched.
"""

import hashlib

try:
    from micropython import const
except ImportError:  # CPython (host tools, tests): const() is the value
    def const(x):
        return x

from core import cbor, cose

V2G_601 = "V2G-601"
V2G_602 = "V2G-602"

MAGIC = b"V2GB"
HEADER_LEN = const(8)
FORMAT_VERSION = const(1)
MAX_COMPONENTS = const(64)
MAX_NAME_LEN = const(64)
MAX_VERSION_LEN = const(32)
MAX_U32 = 0xFFFFFFFF
# Default capacity of one firmware slot; the installer passes its real size.
MAX_TOTAL_SIZE = 512 * 1024

# Manifest map keys (integers keep the manifest small).
K_FORMAT = const(1)
K_SEQ = const(2)
K_SECCNT = const(3)
_K_VENDOR = const(4)
K_BOARD = const(5)
K_VERSION = const(6)
K_COMPONENTS = const(7)
_KEYS = (K_FORMAT, K_SEQ, K_SECCNT, _K_VENDOR, K_BOARD, K_VERSION, K_COMPONENTS)
# map -> components array -> component array
_MAX_DEPTH = const(4)

# uuid5(PROJECT_NAMESPACE, "vendor:v2g-controller") and uuid5(PROJECT_NAMESPACE, board),
# PROJECT_NAMESPACE = d828f43e-da22-4b68-87dc-37a6319e990c. Listed here because a board
# build may lack sha1; tests check them against the host's derivation.
VENDOR_ID = bytes.fromhex("af41273c30075c109761c8c8891364f1")
BOARD_CLASS = {
    "sim": bytes.fromhex("598012c14b675a3695d2924c7ab21941"),
    "pyboard": bytes.fromhex("6bbca268ad0e518f96c3f4d9e9932ea7"),
}
PROJECT_NAMESPACE = bytes.fromhex("d828f43eda224b6887dc37a6319e990c")


class UpdateError(Exception):
    """An update was refused: code is 'V2G-601' or 'V2G-602', msg names the failed check."""

    def __init__(self, code, msg):
        super().__init__(code, msg)
        self.code = code
        self.msg = msg

    def __str__(self):
        return "{} {}".format(self.code, self.msg)


def _reject(msg):
    raise UpdateError(V2G_601, msg)


def board_class_id(name):
    """16-byte board class id of a board name (uuid5 under the project namespace)."""
    if name in BOARD_CLASS:
        return BOARD_CLASS[name]
    try:
        h = hashlib.sha1(PROJECT_NAMESPACE + name.encode()).digest()
    except AttributeError:
        raise ValueError("board {!r}: no class id listed and no sha1 to derive it".format(name)) from None
    b = bytearray(h[:16])
    b[6] = (b[6] & 0x0F) | 0x50  # version 5
    b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
    return bytes(b)


class Component:
    __slots__ = ("name", "offset", "size", "sha256")

    def __init__(self, name, offset, size, sha256):
        self.name = name
        self.offset = offset
        self.size = size
        self.sha256 = sha256


class Manifest:
    __slots__ = ("seq", "security_counter", "vendor_id", "board_class", "version",
                 "components", "total_size")


def parse_header(buf):
    """Length N of the COSE_Sign1 from the first 8 bytes of a bundle."""
    if len(buf) < HEADER_LEN:
        _reject("truncated: {} bytes, shorter than the 8-byte header".format(len(buf)))
    if bytes(buf[:4]) != MAGIC:
        _reject("header: bad magic, not an update bundle")
    n = int.from_bytes(bytes(buf[4:8]), "big")
    if n < 1 or n > cose.MAX_COSE_LEN:
        _reject("header: COSE_Sign1 length {} outside 1-{}".format(n, cose.MAX_COSE_LEN))
    return n


def _is_uint(v, low):
    return type(v) is int and low <= v <= MAX_U32


def _name_ok(name):
    raw = name.encode()
    if not 1 <= len(raw) <= MAX_NAME_LEN:
        return False
    for c in raw:
        if not (0x30 <= c <= 0x39 or 0x41 <= c <= 0x5A or 0x61 <= c <= 0x7A
                or c == 0x2E or c == 0x5F or c == 0x2D or c == 0x2F):
            return False
    for part in name.split("/"):
        if part == "" or part == "." or part == "..":
            return False
    return True


def _version_ok(v):
    if type(v) is not str or not 1 <= len(v) <= MAX_VERSION_LEN:
        return False
    for c in v.encode():
        if c < 0x20 or c > 0x7E:
            return False
    return True


def decode(payload):
    """Decode and check the fields of a manifest payload; return a Manifest."""
    try:
        m = cbor.loads(payload, _MAX_DEPTH, False, True)
    except cbor.CBORError as e:
        _reject("manifest: cbor: {}".format(e))
    if not isinstance(m, dict):
        _reject("manifest: not a map")
    for k in _KEYS:
        if k not in m:
            _reject("manifest: missing key {}".format(k))
    for k in m:
        if k not in _KEYS:
            _reject("manifest: unknown key {!r}".format(k))
    if type(m[K_FORMAT]) is not int or m[K_FORMAT] != FORMAT_VERSION:
        _reject("manifest: format version {!r}, this firmware reads {}".format(m[K_FORMAT], FORMAT_VERSION))
    if not _is_uint(m[K_SEQ], 1):
        _reject("manifest: sequence {!r} not in 1..{}".format(m[K_SEQ], MAX_U32))
    if not _is_uint(m[K_SECCNT], 0):
        _reject("manifest: security counter {!r} not in 0..{}".format(m[K_SECCNT], MAX_U32))
    for k in (_K_VENDOR, K_BOARD):
        if type(m[k]) is not bytes or len(m[k]) != 16:
            _reject("manifest: key {} must be a 16-byte id".format(k))
    if not _version_ok(m[K_VERSION]):
        _reject("manifest: version must be 1-{} printable ASCII characters".format(MAX_VERSION_LEN))
    comps = m[K_COMPONENTS]
    if not isinstance(comps, list) or not 1 <= len(comps) <= MAX_COMPONENTS:
        _reject("manifest: components must be a list of 1-{} entries".format(MAX_COMPONENTS))
    out = []
    names = {}
    offset = 0
    for i in range(len(comps)):
        c = comps[i]
        if (not isinstance(c, list) or len(c) != 3 or type(c[0]) is not str
                or not _is_uint(c[1], 0) or type(c[2]) is not bytes or len(c[2]) != 32):
            _reject("manifest: component {} must be [name, size, 32-byte sha256]".format(i))
        if not _name_ok(c[0]):
            _reject("manifest: component name {!r} is not a safe relative path".format(c[0]))
        if c[0] in names:
            _reject("manifest: component name {!r} twice".format(c[0]))
        names[c[0]] = True
        out.append(Component(c[0], offset, c[1], c[2]))
        offset += c[1]
    for c in out:   # "lib" and "lib/x.py": a slot cannot hold a file and a folder of one name
        k = c.name.rfind('/')
        while k > 0:
            if c.name[:k] in names:
                _reject("manifest: component {!r} is a file, but {!r} needs a folder of that name".format(
                    c.name[:k], c.name))
            k = c.name.rfind('/', 0, k)
    man = Manifest()
    man.seq = m[K_SEQ]
    man.security_counter = m[K_SECCNT]
    man.vendor_id = m[_K_VENDOR]
    man.board_class = m[K_BOARD]
    man.version = m[K_VERSION]
    man.components = out
    man.total_size = offset
    return man


def open_manifest(cose_bytes, key):
    """Verify the COSE_Sign1 with key (p256.PublicKey) and decode its manifest."""
    try:
        payload = cose.verify_sign1(cose_bytes, key)
    except cose.CoseError as e:
        _reject(str(e))
    return decode(payload)


def check(man, board_class, stored_seq, stored_security_counter, capacity=MAX_TOTAL_SIZE):
    """Policy: vendor, board, rollback, size. Raises UpdateError; returns nothing."""
    if man.vendor_id != VENDOR_ID:
        _reject("manifest: vendor id is not this product's")
    if man.board_class != board_class:
        _reject("board: bundle is for another board class")
    if man.seq <= stored_seq:
        raise UpdateError(V2G_602, "rollback: sequence {} is not newer than the installed {}".format(
            man.seq, stored_seq))
    if man.security_counter < stored_security_counter:
        raise UpdateError(V2G_602, "rollback: security counter {} is below the installed {}".format(
            man.security_counter, stored_security_counter))
    if man.total_size > capacity:
        _reject("size: components total {} bytes, above the slot size {}".format(man.total_size, capacity))


class Digest:
    """SHA-256 and byte count of one component, fed in chunks as they arrive."""

    def __init__(self, component):
        self.component = component
        self.count = 0
        self._h = hashlib.sha256()

    def update(self, chunk):
        n = len(chunk)
        if self.count + n > self.component.size:
            _reject("size: component {!r} longer than its {} bytes".format(
                self.component.name, self.component.size))
        self._h.update(chunk)
        self.count += n

    def finish(self):
        c = self.component
        if self.count != c.size:
            _reject("truncated: component {!r} has {} of {} bytes".format(c.name, self.count, c.size))
        if self._h.digest() != c.sha256:
            _reject("digest: component {!r} does not match its sha256".format(c.name))


class BodyCheck:
    """The component bytes after the COSE_Sign1, fed in chunks of any size.

    feed() splits chunks at component boundaries and checks each component's
    digest as soon as its last byte arrives; finish() refuses a short body.
    Bytes past the last component are refused as trailing."""

    def __init__(self, man):
        self.man = man
        self.index = 0
        self.received = 0
        self._digest = Digest(man.components[0])
        self._advance()

    def _advance(self):
        # finish every component whose bytes are all in (zero-size ones need none)
        comps = self.man.components
        while self.index < len(comps) and self._digest.count == comps[self.index].size:
            self._digest.finish()
            self.index += 1
            if self.index < len(comps):
                self._digest = Digest(comps[self.index])

    def feed(self, chunk):
        mv = memoryview(chunk)
        while len(mv):
            if self.index >= len(self.man.components):
                _reject("trailing: {} bytes after the last component".format(len(mv)))
            d = self._digest
            want = d.component.size - d.count
            take = want if want < len(mv) else len(mv)
            d.update(mv[:take])
            mv = mv[take:]
            self.received += take
            self._advance()

    def finish(self):
        if self.index < len(self.man.components):
            _reject("truncated: components need {} bytes, {} present".format(
                self.man.total_size, self.received))


def verify_bundle(data, key, board_class, stored_seq, stored_security_counter, capacity=MAX_TOTAL_SIZE):
    """Check a whole bundle held in memory; return its Manifest or raise UpdateError."""
    n = parse_header(data)
    if len(data) < HEADER_LEN + n:
        _reject("truncated: COSE_Sign1 needs {} bytes, {} present".format(n, len(data) - HEADER_LEN))
    mv = memoryview(data)
    man = open_manifest(bytes(mv[HEADER_LEN:HEADER_LEN + n]), key)
    check(man, board_class, stored_seq, stored_security_counter, capacity)
    body = len(data) - HEADER_LEN - n
    if body < man.total_size:
        _reject("truncated: components need {} bytes, {} present".format(man.total_size, body))
    if body > man.total_size:
        _reject("trailing: {} bytes after the last component".format(body - man.total_size))
    bc = BodyCheck(man)
    bc.feed(mv[HEADER_LEN + n:])
    bc.finish()
    return man
