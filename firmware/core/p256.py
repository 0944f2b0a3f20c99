"""ECDSA P-256 (secp256r1) signature verification in plain integers.

Only verification lives here: the controller never signs. The code runs on
MicroPython (no pow(x, -1, m), no int.bit_length) and CPython alike, so
inverses use Fermat's little theorem and scalars are recoded from bytes.

Speed matters on a 168 MHz Cortex-M4, so:
- points are in Jacobian coordinates (no inversion per step) with the a = -3
  doubling formula;
- u1*G + u2*Q is one interleaved double-and-add pass (Shamir's trick) over
  width-w NAF digits, so the 256 doublings are shared by both scalars;
- the odd multiples of G are constants below and the odd multiples of Q are
  computed once when the key is loaded, both in affine form, so every
  addition is the cheaper mixed (Jacobian + affine) addition;
- the final x-coordinate check multiplies r by Z^2 instead of inverting Z.
The hot loop keeps X, Y, Z in locals and inlines the formulas: a function
call and a tuple per step would cost more than the arithmetic.
"""

import hashlib

# Curve parameters (SEC 2 / FIPS 186-4). a = -3.
P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
GX = 0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296
GY = 0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5

# DER prefix of a SubjectPublicKeyInfo for an uncompressed P-256 point
# (id-ecPublicKey, prime256v1, BIT STRING of 66 bytes). The key id is
# sha256(prefix + point)[:8], the same value the host computes from the PEM.
SPKI_PREFIX = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d030107034200")

W_G = 6  # wNAF width for the fixed base G: 16 constant odd multiples
W_Q = 5  # wNAF width for the public key: 8 odd multiples computed at load

# Odd multiples 1G, 3G, ..., 31G in affine form, flattened as x, y pairs.
# Checked against the generic point arithmetic in tests/firmware/test_p256.py.
_G_TABLE = (
    0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296,
    0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5,
    0x5ECBE4D1A6330A44C8F7EF951D4BF165E6C6B721EFADA985FB41661BC6E7FD6C,
    0x8734640C4998FF7E374B06CE1A64A2ECD82AB036384FB83D9A79B127A27D5032,
    0x51590B7A515140D2D784C85608668FDFEF8C82FD1F5BE52421554A0DC3D033ED,
    0xE0C17DA8904A727D8AE1BF36BF8A79260D012F00D4D80888D1D0BB44FDA16DA4,
    0x8E533B6FA0BF7B4625BB30667C01FB607EF9F8B8A80FEF5B300628703187B2A3,
    0x73EB1DBDE03318366D069F83A6F5900053C73633CB041B21C55E1A86C1F400B4,
    0xEA68D7B6FEDF0B71878938D51D71F8729E0ACB8C2C6DF8B3D79E8A4B90949EE0,
    0x2A2744C972C9FCE787014A964A8EA0C84D714FEAA4DE823FE85A224A4DD048FA,
    0x3ED113B7883B4C590638379DB0C21CDA16742ED0255048BF433391D374BC21D1,
    0x9099209ACCC4C8A224C843AFA4F4C68A090D04DA5E9889DAE2F8EEFCE82A3740,
    0x177C837AE0AC495A61805DF2D85EE2FC792E284B65EAD58A98E15D9D46072C01,
    0x63BB58CD4EBEA558A24091ADB40F4E7226EE14C3A1FB4DF39C43BBE2EFC7BFD8,
    0xF0454DC6971ABAE7ADFB378999888265AE03AF92DE3A0EF163668C63E59B9D5F,
    0xB5B93EE3592E2D1F4E6594E51F9643E62A3B21CE75B5FA3F47E59CDE0D034F36,
    0x47776904C0F1CC3A9C0984B66F75301A5FA68678F0D64AF8BA1ABCE34738A73E,
    0xAA005EE6B5B957286231856577648E8381B2804428D5733F32F787FF71F1FCDC,
    0xCB6D2861102C0C25CE39B7C17108C507782C452257884895C1FC7B74AB03ED83,
    0x58D7614B24D9EF515C35E7100D6D6CE4A496716E30FA3E03E39150752BCECDAA,
    0x3250FCF686637C7B2E4AC86EB473BCA53A582139F42B1523FD76364E67399E83,
    0x42E7C342667D359397B3090D1D7EB88C897CD3C33B566A8215DE24A071D48C09,
    0x0E91C7239C2640D7D28A3E39D4583FA63C0BC0A5DF64A4FE672E573045CA7896,
    0x5DF65C3B550DBA221A22733BB8E0BD6D7E68833575E7A5AE138046543140AD55,
    0x3A67E2554B0C0BB685F4F52D8C07FA8441652FC5B76F1B2484A4DC45F200D687,
    0x27D0F1872F1FCF4326DAF267163AFB0D8C188AF735A7618AA9ED16B302F79324,
    0x184FFA5819D80D51DEBA2FAC4611F378576355BD683E54ABF2E201173B0883D1,
    0xC0A66E276688F359A4C6D90826CB999545BDECCC63F0491620D242C260906E6F,
    0xD6D33ADEFA195B07A7C36DA090853B8CFD8CD1C688B58A41DEDD693D1C784DEF,
    0x84AABA16EE195D7E3F78245F558A5DCB09A166AB4B95EDED550C124593D1BCA6,
    0x301D9E502DC7E05DA85DA026A7AE9AA0FAC9DB7D52A95B3E3E3F9AA0A1B45B8B,
    0x6551B6F6B3061223E0D23C026B017D72298D9AE46887CA61D58DB6AEA17EE267,
)


def _inv(x, m):
    # Fermat: m is prime. MicroPython's three-argument pow runs in C.
    return pow(x, m - 2, m)


def on_curve(x, y):
    """True when (x, y) is an affine point of P-256 (not the point at infinity)."""
    if not (0 <= x < P and 0 <= y < P):
        return False
    return (y * y - (x * x * x - 3 * x + B)) % P == 0


def _jdouble(x, y, z):
    # dbl-2001-b (a = -3); z == 0 stays the point at infinity.
    p = P
    d = z * z % p
    g = y * y % p
    bt = x * g % p
    al = 3 * (x - d) * (x + d) % p
    x3 = (al * al - (bt << 3)) % p
    z3 = (y + y) * z % p
    y3 = (al * ((bt << 2) - x3) - ((g * g) << 3)) % p
    return x3, y3, z3


def _jadd_affine(x1, y1, z1, x2, y2):
    # Jacobian + affine; handles infinity, equal and opposite points.
    p = P
    if z1 == 0:
        return x2, y2, 1
    zz = z1 * z1 % p
    h = (x2 * zz - x1) % p
    r = (y2 * zz * z1 - y1) % p
    if h == 0:
        if r == 0:
            return _jdouble(x1, y1, z1)
        return 1, 1, 0
    hh = h * h % p
    hhh = h * hh % p
    v = x1 * hh % p
    x3 = (r * r - hhh - (v << 1)) % p
    y3 = (r * (v - x3) - y1 * hhh) % p
    return x3, y3, z1 * h % p


def _to_affine(x, y, z):
    zi = _inv(z, P)
    zi2 = zi * zi % P
    return x * zi2 % P, y * zi2 * zi % P


def _odd_multiples(x, y, count):
    """Affine odd multiples 1Q, 3Q, ..., (2*count-1)Q, flattened as x, y."""
    out = [x, y]
    dx, dy = _to_affine(*_jdouble(x, y, 1))
    jx, jy, jz = x, y, 1
    for _ in range(count - 1):
        jx, jy, jz = _jadd_affine(jx, jy, jz, dx, dy)
        if jz == 0:
            raise ValueError("public key: small-order point")
        ax, ay = _to_affine(jx, jy, jz)
        out.append(ax)
        out.append(ay)
    return tuple(out)


def _wnaf(k, w):
    """Width-w NAF digits of 0 <= k < 2**256, least significant first.

    Each digit is 0 or odd with |d| < 2**(w-1); k == sum(d[i] << i).
    Works on a bit array of small ints so no big integer is shifted per bit.
    """
    width = 1 << w
    half = width >> 1
    n = 256 + w + 1
    bits = bytearray(n)
    raw = k.to_bytes(32, "big")
    pos = 0
    for i in range(31, -1, -1):
        v = raw[i]
        for _ in range(8):
            bits[pos] = v & 1
            v >>= 1
            pos += 1
    digits = [0] * 258  # same length for every width: 257 digits at most
    i = 0
    while i < 257:
        if bits[i] == 0:
            i += 1
            continue
        v = 0
        for j in range(w - 1, -1, -1):
            v = (v << 1) | bits[i + j]
            bits[i + j] = 0
        if v >= half:
            v -= width
            # add 2**(i+w) to what is left: ripple the carry up the bit array
            c = i + w
            while bits[c]:
                bits[c] = 0
                c += 1
            bits[c] = 1
        digits[i] = v
        i += w
    return digits


def _shamir(u1, u2, qtab):
    """Jacobian (X, Y, Z) of u1*G + u2*Q; Z == 0 means the point at infinity."""
    p = P
    gtab = _G_TABLE
    dg = _wnaf(u1, W_G)
    dq = _wnaf(u2, W_Q)
    top = 257
    while top >= 0 and dg[top] == 0 and dq[top] == 0:
        top -= 1
    x = y = 1
    z = 0
    i = top
    while i >= 0:
        if z:
            # inlined _jdouble
            d = z * z % p
            g = y * y % p
            bt = x * g % p
            al = 3 * (x - d) * (x + d) % p
            z = (y + y) * z % p
            x = (al * al - (bt << 3)) % p
            y = (al * ((bt << 2) - x) - ((g * g) << 3)) % p
        for t in (0, 1):
            if t == 0:
                v = dg[i]
                tab = gtab
            else:
                v = dq[i]
                tab = qtab
            if v == 0:
                continue
            if v > 0:
                ax = tab[v - 1]
                ay = tab[v]
            else:
                ax = tab[-v - 1]
                ay = p - tab[-v]
            if z == 0:
                x = ax
                y = ay
                z = 1
                continue
            # inlined _jadd_affine (rare cases delegated)
            zz = z * z % p
            h = (ax * zz - x) % p
            r = (ay * zz * z - y) % p
            if h == 0:
                x, y, z = _jadd_affine(x, y, z, ax, ay)
                continue
            hh = h * h % p
            hhh = h * hh % p
            v = x * hh % p
            z = z * h % p
            x = (r * r - hhh - (v << 1)) % p
            y = (r * (v - x) - y * hhh) % p
        i -= 1
    return x, y, z


class PublicKey:
    """A P-256 public key loaded once (at boot) and used for many verifications."""

    def __init__(self, point):
        """point: 65 bytes, 0x04 || X || Y (uncompressed SEC 1 encoding)."""
        if len(point) != 65 or point[0] != 4:
            raise ValueError("public key: need 65-byte uncompressed point 04||X||Y")
        x = int.from_bytes(point[1:33], "big")
        y = int.from_bytes(point[33:65], "big")
        if not on_curve(x, y):
            raise ValueError("public key: point not on P-256")
        self.x = x
        self.y = y
        self.point = bytes(point)
        self.kid = hashlib.sha256(SPKI_PREFIX + self.point).digest()[:8]
        # P-256 has prime order and cofactor 1, so any on-curve point other
        # than infinity is a valid key; the table is the per-key precomputation.
        self._tab = _odd_multiples(x, y, 1 << (W_Q - 2))

    def verify_digest(self, digest, sig):
        """True when sig (raw r||s, 64 bytes) signs the 32-byte SHA-256 digest."""
        if len(sig) != 64 or len(digest) != 32:
            return False
        r = int.from_bytes(sig[:32], "big")
        s = int.from_bytes(sig[32:], "big")
        if not (0 < r < N and 0 < s < N):
            return False
        e = int.from_bytes(digest, "big")  # 256-bit hash: no truncation for P-256
        w = _inv(s, N)
        u1 = e * w % N
        u2 = r * w % N
        x, _, z = _shamir(u1, u2, self._tab)
        if z == 0:
            return False  # R is the point at infinity
        # x(R) mod n == r  <=>  X == r' * Z^2 (mod p) for r' in {r, r + n} below p
        zz = z * z % P
        if x == r * zz % P:
            return True
        return r + N < P and x == (r + N) * zz % P

    def verify(self, msg, sig):
        """True when sig (raw r||s) is an ES256 signature of msg."""
        return self.verify_digest(hashlib.sha256(msg).digest(), sig)
