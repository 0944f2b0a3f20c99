"""Exact decimals on the host link: CBOR tag 4, a decimal fraction [exponent, mantissa]
meaning mantissa * 10**exponent (RFC 8949 section 3.4.4).

No float crosses the link: a single-precision board would send FREQ_DEADBAND_HZ 0.036 as
0.035999998450279236 and read a double beyond its range as inf. A decimal setting goes out
as an integer when whole, else as the decimal fraction of its whole number of steps
(0.036 Hz: [-3, 36]), and the host sends a decimal value the same way; both are read into
steps with integer arithmetic only. cbor2 on the host reads and writes tag 4 as a Decimal.
"""
from core.cbor import Tag

TAG = 4
_EXP_MAX = 18            # |exponent| taken: 10**18 is beyond any setting's resolution
_MANTISSA_MAX = 10 ** 18


def of_steps(n, scale):
    """n steps of 1/scale (scale a power of ten) as sent on the link: the int when whole,
    else a decimal fraction with no trailing zero in its mantissa."""
    if n % scale == 0:
        return n // scale
    e = 0
    while scale > 1:
        scale //= 10
        e -= 1
    while n % 10 == 0:
        n //= 10
        e += 1
    return Tag(TAG, [e, n])


def is_fraction(v):
    return isinstance(v, Tag) and v.tag == TAG


def steps(v, scale):
    """A decimal fraction as a whole number of steps of 1/scale: (n, exact), n rounded half
    away from zero; None when v is not a well-formed decimal fraction."""
    if not is_fraction(v) or not isinstance(v.value, list) or len(v.value) != 2:
        return None
    e, m = v.value
    for x in (e, m):
        if not isinstance(x, int) or x is True or x is False:
            return None
    if e < -_EXP_MAX or e > _EXP_MAX or m > _MANTISSA_MAX or m < -_MANTISSA_MAX:
        return None
    neg = m < 0
    if neg:
        m = -m
    if e >= 0:
        n, r, d = m * 10 ** e * scale, 0, 1
    else:
        d = 10 ** -e
        n, r = divmod(m * scale, d)
    if 2 * r >= d:
        n += 1
    return (-n if neg else n), r == 0


def text(v):
    """A decimal fraction as its decimal text ('0.036'), for messages; repr otherwise."""
    if steps(v, 1) is None:
        return repr(v)
    e, m = v.value
    sign = '-' if m < 0 else ''
    m = -m if m < 0 else m
    if e >= 0:
        return sign + str(m) + '0' * e
    t = str(m)
    if len(t) <= -e:
        t = '0' * (-e - len(t) + 1) + t
    return sign + t[:e] + '.' + t[e:]
