"""Signed update bundles: build, sign, check, and write as Intel HEX.

Layout of a bundle file (all integers big-endian; docs/signed-updates.md has the details):

    offset 0      4 bytes   magic b"V2GB"
    offset 4      4 bytes   N = length of the COSE_Sign1 that follows (1 .. MAX_COSE_LEN)
    offset 8      N bytes   COSE_Sign1 (RFC 9052, CBOR tag 18), deterministic CBOR
    offset 8+N    ...       the component bytes, concatenated in manifest order, nothing after

The COSE_Sign1 payload is the manifest, a deterministic-CBOR map with integer keys:

    1 format version (uint, FORMAT_VERSION)      5 board class id (16-byte bstr, uuid5)
    2 sequence number (uint, 1 .. 2**32-1)       6 version string (text, 1 .. 32 printable ASCII)
    3 security counter (uint, 0 .. 2**32-1)      7 components: array of [name, size, sha256]
    4 vendor id (16-byte bstr)

The protected header holds alg (1: -7 ES256 or -8 EdDSA) and kid (4: 8 bytes); the
unprotected header is empty. An ES256 signature is raw r||s (64 bytes), as COSE says.

`verify()` checks in a fixed order and raises BundleError naming the first failure.
The manifest's format, limits and field rules have one home, the controller's
firmware/core/manifest.py: this module imports them (as `core`, see host_tools/tree.py)
and checks every manifest it builds or reads with core.manifest.decode. What is the
host's own: cbor2 and `cryptography` for encoding and signatures, board names, the
readable form of a manifest.
"""

import hashlib
import io
import re
import struct
import uuid
from collections.abc import Mapping

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

import host_tools  # noqa: F401  (makes `core` the firmware's core package)
from core import cose as core_cose
from core import manifest as core_manifest
from signing import keys

MAGIC = core_manifest.MAGIC
HEADER_LEN = core_manifest.HEADER_LEN
FORMAT_VERSION = core_manifest.FORMAT_VERSION
COSE_SIGN1_TAG = core_cose.COSE_SIGN1_TAG

# Limits: the controller's.
MAX_COSE_LEN = core_cose.MAX_COSE_LEN
MAX_COMPONENTS = core_manifest.MAX_COMPONENTS
MAX_NAME_LEN = core_manifest.MAX_NAME_LEN
MAX_VERSION_LEN = core_manifest.MAX_VERSION_LEN
MAX_U32 = core_manifest.MAX_U32
# Deepest nesting in a COSE_Sign1 or a manifest (tag/array/map levels), as on the controller.
MAX_DEPTH = core_cose.MAX_DEPTH
# Default capacity of one firmware slot; the installer passes the real one.
MAX_TOTAL_SIZE = core_manifest.MAX_TOTAL_SIZE

# Manifest map keys.
K_FORMAT, K_SEQ, K_SECCNT, K_VENDOR, K_BOARD, K_VERSION, K_COMPONENTS = core_manifest._KEYS
MANIFEST_KEYS = core_manifest._KEYS
# COSE header labels (RFC 9052 section 3.1).
H_ALG, H_KID = 1, 4

# Board class ids are uuid5(PROJECT_NAMESPACE, board name); the vendor id is
# uuid5(PROJECT_NAMESPACE, "vendor:v2g-controller"). A colon cannot occur in a
# board name, so the vendor id never equals a board class id.
PROJECT_NAMESPACE = uuid.UUID("d828f43e-da22-4b68-87dc-37a6319e990c")
VENDOR_ID = uuid.uuid5(PROJECT_NAMESPACE, "vendor:v2g-controller")
KNOWN_BOARDS = ("sim", "pyboard")

_BOARD_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


class BundleError(ValueError):
    """A bundle failed a check. `what` is a short tag of the failed check
    (header, truncated, cbor, cose, alg, kid, signature, manifest, board, rollback,
    size, digest, trailing); str(e) says what and why."""

    def __init__(self, what, msg):
        super().__init__("{}: {}".format(what, msg))
        self.what = what


def board_class_id(board):
    """The 16-byte board class id (uuid5 under PROJECT_NAMESPACE) of a board name."""
    if not _BOARD_RE.match(board or ""):
        raise ValueError("board name {!r}: use 1-32 of a-z 0-9 _ - (starting with a letter or digit)"
                         .format(board))
    return uuid.uuid5(PROJECT_NAMESPACE, board)


# ------------------------------------------------------------------ signing

def build_manifest(components, seq, version, board, security_counter=0, vendor_id=VENDOR_ID):
    """The manifest map (integer keys) for components: a list of (name, bytes).

    Raises ValueError, in the controller's words, for anything it would refuse."""
    entries = [[name, len(data), hashlib.sha256(data).digest()] for name, data in components]
    total = sum(e[1] for e in entries)
    manifest = {
        K_FORMAT: FORMAT_VERSION,
        K_SEQ: seq,
        K_SECCNT: security_counter,
        K_VENDOR: uuid.UUID(str(vendor_id)).bytes,
        K_BOARD: board_class_id(board).bytes,
        K_VERSION: version,
        K_COMPONENTS: entries,
    }
    try:
        core_manifest.decode(_dumps(manifest))
    except (cbor2.CBOREncodeError, TypeError) as e:
        raise ValueError("manifest: cannot encode it ({})".format(e)) from None
    except core_manifest.UpdateError as e:
        raise ValueError(e.msg) from None
    if total > MAX_TOTAL_SIZE:
        raise ValueError("components total {} bytes, above the slot size {}".format(total, MAX_TOTAL_SIZE))
    return manifest


def _dumps(obj):
    # Integer keys of one encoded byte and text keys sort the same under cbor2's
    # length-first rule and RFC 8949's bytewise rule, so this is deterministic CBOR.
    return cbor2.dumps(obj, canonical=True)


def sig_structure(protected, payload):
    """The bytes that are signed (RFC 9052 section 4.4)."""
    return _dumps(["Signature1", protected, b"", payload])


def _raw_sign(key, data):
    if keys.algorithm(key) == keys.ES256:
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return key.sign(data)


def sign_payload(key, payload):
    """COSE_Sign1 bytes over payload, with alg and kid in the protected header."""
    protected = _dumps({H_ALG: keys.COSE_ALG[keys.algorithm(key)], H_KID: keys.key_id(key)})
    signature = _raw_sign(key, sig_structure(protected, payload))
    return _dumps(cbor2.CBORTag(COSE_SIGN1_TAG, [protected, {}, payload, signature]))


def assemble(cose, body):
    """Bundle bytes from a COSE_Sign1 and the concatenated component bytes."""
    if not 1 <= len(cose) <= MAX_COSE_LEN:
        raise ValueError("COSE_Sign1 of {} bytes: 1-{} allowed (fewer or smaller components)"
                         .format(len(cose), MAX_COSE_LEN))
    return MAGIC + struct.pack(">I", len(cose)) + cose + body


def sign(key, components, seq, version, board, security_counter=0, vendor_id=VENDOR_ID):
    """A complete bundle (bytes). components: list of (name, bytes), in install order."""
    manifest = build_manifest(components, seq, version, board, security_counter, vendor_id)
    cose = sign_payload(key, _dumps(manifest))
    return assemble(cose, b"".join(data for _, data in components))


# A bundle for a board whose firmware runs from two ROMFS partitions (pybd_sf6): one component,
# the ROMFS image, written by the controller into the partition that is not running.
ROMFS_COMPONENT = "romfs.img"
ROMFS_HEADER = b"\xd2\xcd\x31"


def sign_romfs(key, image, seq, version, board, security_counter=0, partition_size=None):
    """A bundle holding the ROMFS image `image` as its one component, romfs.img. ValueError
    when it is not a ROMFS image or does not fit the board's partition."""
    image = bytes(image)
    if image[:3] != ROMFS_HEADER:
        raise ValueError("{}: not a ROMFS image (no d2cd31 header)".format(ROMFS_COMPONENT))
    if partition_size is not None and len(image) > partition_size:
        raise ValueError("{} of {:,} B does not fit the board's {:,} B ROMFS partition".format(
            ROMFS_COMPONENT, len(image), partition_size))
    return sign(key, [(ROMFS_COMPONENT, image)], seq, version, board, security_counter)


# ------------------------------------------------------------------ checking

def _strict_loads(data, what):
    """Decode CBOR and insist on deterministic encoding: re-encoding must give the same bytes.

    That one comparison refuses indefinite lengths, duplicate or unsorted map keys,
    non-shortest heads, and anything after the item."""
    try:
        obj = cbor2.loads(data)
    except (cbor2.CBORDecodeError, RecursionError, MemoryError, OverflowError, ValueError) as e:
        raise BundleError("cbor", "{}: malformed CBOR ({})".format(what, e)) from None
    try:
        again = _dumps(obj)
    except (cbor2.CBOREncodeError, ValueError, TypeError) as e:
        raise BundleError("cbor", "{}: holds an item the format does not use ({})".format(what, e)) from None
    if _depth(obj) > MAX_DEPTH:
        raise BundleError("cbor", "{}: nesting deeper than {}".format(what, MAX_DEPTH))
    if again != bytes(data):
        raise BundleError("cbor", "{}: not deterministic CBOR (indefinite length, duplicate or "
                                  "unsorted map key, non-shortest head, or extra bytes)".format(what))
    return obj


def _depth(obj):
    """Nesting depth of a decoded item: containers and tags count one level each."""
    deepest = 0
    stack = [(obj, 0)]
    while stack:
        item, d = stack.pop()
        if isinstance(item, cbor2.CBORTag):
            stack.append((item.value, d + 1))
        elif isinstance(item, (list, tuple)):
            stack.extend((v, d + 1) for v in item)
        elif isinstance(item, Mapping):
            stack.extend((v, d + 1) for kv in item.items() for v in kv)
        else:
            deepest = max(deepest, d)
            continue
        deepest = max(deepest, d + 1)
    return deepest


def split(bundle):
    """(cose_bytes, body) of a bundle; checks the header and that the COSE part is all there."""
    if len(bundle) < HEADER_LEN:
        raise BundleError("truncated", "{} bytes, shorter than the {}-byte header".format(len(bundle), HEADER_LEN))
    magic, n = struct.unpack(">4sI", bundle[:HEADER_LEN])
    if magic != MAGIC:
        raise BundleError("header", "magic {!r} is not {!r}: not an update bundle".format(magic, MAGIC))
    if not 1 <= n <= MAX_COSE_LEN:
        raise BundleError("header", "COSE_Sign1 length {} outside 1-{}".format(n, MAX_COSE_LEN))
    if len(bundle) < HEADER_LEN + n:
        raise BundleError("truncated", "COSE_Sign1 needs {} bytes, {} present"
                          .format(n, len(bundle) - HEADER_LEN))
    return bytes(bundle[HEADER_LEN:HEADER_LEN + n]), bytes(bundle[HEADER_LEN + n:])


def open_sign1(cose, pubkey):
    """Check a COSE_Sign1 against pubkey; return the payload bytes."""
    obj = _strict_loads(cose, "COSE_Sign1")
    if not isinstance(obj, cbor2.CBORTag) or obj.tag != COSE_SIGN1_TAG:
        raise BundleError("cose", "not a tagged COSE_Sign1 (CBOR tag 18)")
    v = obj.value
    if not isinstance(v, (list, tuple)) or len(v) != 4:
        raise BundleError("cose", "COSE_Sign1 must be an array of 4 items")
    protected, unprotected, payload, signature = v
    if not isinstance(protected, bytes) or not isinstance(payload, bytes) or not isinstance(signature, bytes):
        raise BundleError("cose", "protected header, payload and signature must be byte strings")
    if not isinstance(unprotected, Mapping):
        raise BundleError("cose", "unprotected header must be a map")
    if unprotected:
        if H_ALG in unprotected:
            raise BundleError("alg", "alg in the unprotected header; it is accepted only when protected")
        raise BundleError("cose", "unprotected header must be empty (labels {})".format(sorted(unprotected, key=str)))
    hdr = _strict_loads(protected, "protected header") if protected else {}
    if not isinstance(hdr, Mapping):
        raise BundleError("cose", "protected header must be a map")
    if H_ALG not in hdr:
        raise BundleError("alg", "no alg in the protected header")
    extra = [k for k in hdr if k not in (H_ALG, H_KID)]
    if extra:
        raise BundleError("cose", "unexpected protected header labels {}".format(extra))
    alg = hdr[H_ALG]
    want_alg = keys.COSE_ALG[keys.algorithm(pubkey)]
    if alg not in keys.COSE_ALG_NAME:
        raise BundleError("alg", "alg {!r} is not ES256 (-7) or EdDSA (-8)".format(alg))
    if alg != want_alg:
        raise BundleError("alg", "bundle alg {} does not match the {} key".format(
            keys.COSE_ALG_NAME[alg], keys.COSE_ALG_NAME[want_alg]))
    kid = hdr.get(H_KID)
    if not isinstance(kid, bytes):
        raise BundleError("kid", "no kid (byte string) in the protected header")
    if kid != keys.key_id(pubkey):
        raise BundleError("kid", "unknown key id {} (this key is {})".format(kid.hex(), keys.key_id(pubkey).hex()))
    if len(signature) != 64:
        raise BundleError("signature", "{} bytes, 64 expected".format(len(signature)))
    tbs = sig_structure(protected, payload)
    pub = keys.as_public(pubkey)
    try:
        if alg == -7:
            r = int.from_bytes(signature[:32], "big")
            s = int.from_bytes(signature[32:], "big")
            pub.verify(encode_dss_signature(r, s), tbs, ec.ECDSA(hashes.SHA256()))
        else:
            pub.verify(signature, tbs)
    except InvalidSignature:
        raise BundleError("signature", "does not verify with key {}".format(kid.hex())) from None
    return payload


def decode_manifest(payload):
    """Check a manifest payload with the controller's rules; return it as a readable dict."""
    try:
        man = core_manifest.decode(payload)
    except core_manifest.UpdateError as e:
        rest = e.msg[len("manifest: "):] if e.msg.startswith("manifest: ") else e.msg
        if rest.startswith("cbor: "):
            raise BundleError("cbor", "manifest: " + rest[len("cbor: "):]) from None
        raise BundleError("manifest", rest) from None
    out = []
    for c in man.components:
        out.append({"name": c.name, "offset": c.offset, "size": c.size, "sha256": c.sha256.hex()})
    board_id = uuid.UUID(bytes=man.board_class)
    board = next((b for b in KNOWN_BOARDS if board_class_id(b) == board_id), None)
    return {
        "format": FORMAT_VERSION,
        "sequence": man.seq,
        "security_counter": man.security_counter,
        "vendor_id": str(uuid.UUID(bytes=man.vendor_id)),
        "board_class_id": str(board_id),
        "board": board,
        "version": man.version,
        "components": out,
        "total_size": man.total_size,
    }


def verify(bundle, pubkey, board=None, stored_seq=None, stored_security_counter=None,
           max_total=MAX_TOTAL_SIZE, vendor_id=VENDOR_ID):
    """Check a whole bundle; return its manifest (readable dict) or raise BundleError.

    Order: header, COSE structure, alg, kid, signature, manifest fields, vendor, board
    (when given), rollback (when stored values are given), size limit, truncation,
    trailing bytes, then each component's SHA-256.
    """
    cose, body = split(bundle)
    payload = open_sign1(cose, pubkey)
    man = decode_manifest(payload)
    if man["vendor_id"] != str(vendor_id):
        raise BundleError("manifest", "vendor id {} is not {}".format(man["vendor_id"], vendor_id))
    if board is not None and man["board_class_id"] != str(board_class_id(board)):
        raise BundleError("board", "bundle is for board class {} ({}), this is {}".format(
            man["board_class_id"], man["board"] or "unknown board", board))
    if stored_seq is not None and man["sequence"] <= stored_seq:
        raise BundleError("rollback", "sequence {} is not newer than the installed {}".format(
            man["sequence"], stored_seq))
    if stored_security_counter is not None and man["security_counter"] < stored_security_counter:
        raise BundleError("rollback", "security counter {} is below the installed {}".format(
            man["security_counter"], stored_security_counter))
    total = man["total_size"]
    if total > max_total:
        raise BundleError("size", "components total {} bytes, above the slot size {}".format(total, max_total))
    if len(body) < total:
        raise BundleError("truncated", "components need {} bytes, {} present".format(total, len(body)))
    if len(body) > total:
        raise BundleError("trailing", "{} bytes after the last component".format(len(body) - total))
    for c in man["components"]:
        digest = hashlib.sha256(body[c["offset"]:c["offset"] + c["size"]]).hexdigest()
        if digest != c["sha256"]:
            raise BundleError("digest", "component {!r}: sha256 {} does not match the manifest's {}".format(
                c["name"], digest, c["sha256"]))
    man["kid"] = keys.key_id(pubkey).hex()
    man["alg"] = keys.COSE_ALG_NAME[keys.COSE_ALG[keys.algorithm(pubkey)]]
    return man


# ------------------------------------------------------------------ Intel HEX

def to_intelhex(bundle, address):
    """The bundle as Intel HEX text, placed at address (the start of the update partition)."""
    from intelhex import IntelHex

    if isinstance(address, bool) or not isinstance(address, int) or address < 0:
        raise ValueError("hex address {!r}: a non-negative integer".format(address))
    if address + len(bundle) > 0x100000000:
        raise ValueError("bundle of {} bytes at 0x{:08X} runs past the 4 GiB address space"
                         .format(len(bundle), address))
    ih = IntelHex()
    ih.frombytes(bundle, offset=address)
    out = io.StringIO()
    ih.write_hex_file(out, write_start_addr=False)
    return out.getvalue()
