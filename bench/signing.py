"""Signed updates: how long the controller takes to check a bundle's signature, and how much
heap one ES256 verification allocates.

Measured in the MicroPython VM (Node + WebAssembly). The VM's integers have 16-bit digits
like the STM32F405 build's, so the bytes a verify allocates are the board's: gc.mem_alloc()
before and after one verify with the collector disabled in between (gc.disable(); what C
frees itself, such as pow()'s temporaries, is not counted). Goal: 64 kB or less, so that a
verify does not run the collector several times over a 96 kB heap; not met (about 163 kB:
heap integers with 128-entry tables cannot go below about 105 kB, docs/signed-updates.md),
and VERIFY_HEAP_BUDGET is the ceiling the tests hold the design to.

Time. The VM x 15 rule (VM against board on plain bytecode, pystone) misses big-integer
code, which allocates: the wNAF verifier this module replaced took about 50 million
instructions on an emulated Cortex-M4F, at least 0.30 s at 168 MHz, where VM x 15 said
0.09 s. So the board figure here starts from that measurement and scales it by the
comb verifier's share of the wNAF one's work, taking the larger of two ratios measured in
this run: VM time (bytecode and arithmetic) and heap allocated (collector work). The wNAF
verifier is kept below, in this file only, to be measured beside the firmware's.
Goals: the comb at most half the wNAF's VM time; the whole ES256 check under 0.5 s on the
board.

Slices. The installer runs the key load and the verify in slices of at most SLICE_OPS point
operations, one per control step (docs/signed-updates.md). Each slice's board figure is its
share of the whole's work (the larger of heap and VM time shares) times the whole's board
estimate; goal: the longest slice at most 20 ms, so that a protection stage of 0.1 s is
never held up by an update.
"""

import json
import tempfile
from pathlib import Path

from host_tools import vm
from signing import bundle, keys

SLICE_OPS = 6    # firmware/core/p256.py SLICE_OPS (read by the firmware, not imported here)

BOARD_FACTOR = 15          # VM x 15: plain bytecode only (pystone)
OLD_BOARD_INSTRUCTIONS = 50e6   # wNAF verify on the emulated Cortex-M4F
BOARD_HZ = 168e6
GOAL_S = 0.5
HEAP_GOAL = 64 * 1024
ROUNDS = 5                 # alternating rounds; the fastest of each counts (shared machine)
PER_ROUND = 10
SLICE_RUNS = 100           # runs of the sliced key load and verify whose slice times are averaged
SLICE_CAP_MS = 2           # a slice reading more than this was preempted (see slice_estimate)
SLICE_GOAL_S = 0.020       # longest uninterrupted slice on the board (a protection stage is 0.1 s)

# The verifier firmware/core/p256.py had before the comb: Shamir's trick over width-6 (G)
# and width-5 (key) NAF digits, 256 doublings. Written to the VM as p256_wnaf.py.
WNAF_SOURCE = '''
from core.p256 import P, N, GX, GY

W_G = 6
W_Q = 5


def _inv(x, m):
    return pow(x, m - 2, m)


def _jdouble(x, y, z):
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
    out = [x, y]
    dx, dy = _to_affine(*_jdouble(x, y, 1))
    jx, jy, jz = x, y, 1
    for _ in range(count - 1):
        jx, jy, jz = _jadd_affine(jx, jy, jz, dx, dy)
        ax, ay = _to_affine(jx, jy, jz)
        out.append(ax)
        out.append(ay)
    return tuple(out)


_G_TABLE = _odd_multiples(GX, GY, 1 << (W_G - 2))


def _wnaf(k, w):
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
    digits = [0] * 258
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
            c = i + w
            while bits[c]:
                bits[c] = 0
                c += 1
            bits[c] = 1
        digits[i] = v
        i += w
    return digits


def _shamir(u1, u2, qtab):
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
    def __init__(self, point):
        self.x = int.from_bytes(point[1:33], "big")
        self.y = int.from_bytes(point[33:65], "big")
        self._tab = _odd_multiples(self.x, self.y, 1 << (W_Q - 2))

    def verify_digest(self, digest, sig):
        r = int.from_bytes(sig[:32], "big")
        s = int.from_bytes(sig[32:], "big")
        if not (0 < r < N and 0 < s < N):
            return False
        e = int.from_bytes(digest, "big")
        w = _inv(s, N)
        x, _, z = _shamir(e * w % N, r * w % N, self._tab)
        if z == 0:
            return False
        zz = z * z % P
        if x == r * zz % P:
            return True
        return r + N < P and x == (r + N) * zz % P
'''

_VM_CODE = """
import gc, time, json, hashlib, sys
sys.path.insert(0, '/bench')
from core import p256, manifest, cose
import p256_wnaf
with open('/bench/in.json') as f:
    d = json.load(f)
point = bytes.fromhex(d['point'])
data = bytes.fromhex(d['bundle'])


def heap(fn):
    # the collector held off: mem_alloc's growth is what fn allocated and did not free itself
    gc.collect()
    gc.disable()
    before = gc.mem_alloc()
    fn()
    used = gc.mem_alloc() - before
    gc.enable()
    return used


def best(fn, rounds, per):
    t = None
    for _ in range(rounds):
        t0 = time.ticks_ms()
        for _ in range(per):
            fn()
        ms = time.ticks_diff(time.ticks_ms(), t0) / per
        t = ms if t is None or ms < t else t
    return t


t_key = best(lambda: p256.PublicKey(point), {rounds}, 2)
key = p256.PublicKey(point)
key1 = p256.PublicKey(point, halves=1)   # no room for update_key.tab: one table per base
head = p256.cache_head(point, key._tab)   # update_key.tab: this head, then the tables
tabs = [bytes(t) for t in key._tab]
def from_cache():
    assert p256.cache_holds(point, head, tabs)
    return p256.PublicKey(point, tabs)
t_cache = best(from_cache, {rounds}, 20)
h_cache = heap(from_cache)
old = p256_wnaf.PublicKey(point)
n = manifest.parse_header(data)
cose_bytes = data[8:8 + n]
protected, hdr, payload, sig = cose.parse_sign1(cose_bytes)
digest = hashlib.sha256(cose.sig_structure(protected, payload)).digest()
ok = key.verify_digest(digest, sig) and old.verify_digest(digest, sig)
t_new = t_old = None
for _ in range({rounds}):     # alternate, so both see the same machine load
    a = best(lambda: key.verify_digest(digest, sig), 1, {per})
    b = best(lambda: old.verify_digest(digest, sig), 1, {per})
    t_new = a if t_new is None or a < t_new else t_new
    t_old = b if t_old is None or b < t_old else t_old
t_open = best(lambda: manifest.open_manifest(cose_bytes, key), {rounds}, 2)
h_new = heap(lambda: key.verify_digest(digest, sig))
h_one = heap(lambda: key1.verify_digest(digest, sig))
h_old = heap(lambda: old.verify_digest(digest, sig))
h_key = heap(lambda: p256.PublicKey(point))
# the sliced forms: heap per slice (collector held off; deterministic), and VM time per slice
# in each of SLICE_RUNS runs (ticks_ms has 1 ms steps and a slice is well under it: averaged
# over runs with an unrelated phase, the steps average out)
def slices(make):
    heaps = []
    g = make()
    while True:
        gc.collect()
        gc.disable()
        b = gc.mem_alloc()
        try:
            k = next(g)
        except StopIteration:
            gc.enable()
            break
        heaps.append([k, gc.mem_alloc() - b])
        gc.enable()
    runs = [[] for _ in heaps]
    for _ in range({slice_runs}):
        g = make()
        i = 0
        t = time.ticks_ms()
        for _k in g:
            t2 = time.ticks_ms()
            runs[i].append(time.ticks_diff(t2, t))
            i += 1
            t = time.ticks_ms()
    return [[h[0], h[1], r] for h, r in zip(heaps, runs)]
x, y = p256.parse_point(point)
s_key = slices(lambda: p256.key_tables_steps(x, y, []))
s_ver = slices(lambda: key.verify_steps(digest, sig, []))
h_sliced = heap(lambda: p256.run(key.verify_steps(digest, sig, [])))
t0 = time.ticks_ms()
man2 = manifest.verify_bundle(data, key, manifest.BOARD_CLASS['sim'], 0, 0)
t_all = time.ticks_diff(time.ticks_ms(), t0)
print('RESULT', json.dumps({{'key': t_key, 'cache': t_cache, 'heap_cache': h_cache, 'open': t_open, 'verify': t_new, 'verify_old': t_old,
                            'heap': h_new, 'heap_one': h_one, 'heap_old': h_old, 'heap_key': h_key, 'ok': ok,
                            'all': t_all, 'size': len(data), 'heap_sliced': h_sliced}}))
# one line per slice: all of them in one line would pass the VM's 64 KiB line
for name, sl in (('s_key', s_key), ('s_ver', s_ver)):
    for e in sl:
        print('SLICE', name, json.dumps(e))
"""


# What one verify may allocate at most (VM, 16-bit digits as on the board), checked by
# tests/host/test_p256_budget.py: 161.7-163.4 kB measured for the fixed vectors with two
# tables per base (2026-12-05), 187.4-188.2 kB with one (a filesystem without room for the
# kept tables); the comb before both 192.7 kB. A ceiling on the design as it is, not the
# goal: HEAP_GOAL needs field arithmetic outside heap integers or tables of megabytes
# (docs/signed-updates.md).
VERIFY_HEAP_BUDGET = 165000
VERIFY_HEAP_BUDGET_ONE_TABLE = 190000

_HEAP_CODE = """
import gc, hashlib, json
from core import p256
for pt, msg, sig in json.loads({vectors!r}):
    key = p256.PublicKey(bytes.fromhex(pt), halves={halves})
    digest = hashlib.sha256(bytes.fromhex(msg)).digest()
    sig = bytes.fromhex(sig)
    key.verify_digest(digest, sig)
    gc.collect()
    gc.disable()          # nothing collected meanwhile: the growth is what the verify allocated
    before = gc.mem_alloc()
    ok = key.verify_digest(digest, sig)
    used = gc.mem_alloc() - before
    gc.enable()
    print('HEAP', json.dumps([ok, used]))
"""


def verify_heaps(vectors, halves=2):
    """[(verdict, bytes allocated)] of one ES256 verify per (point hex, message bytes,
    r||s hex), in the MicroPython VM, with halves tables per base (p256.key_tables_steps)."""
    vec = json.dumps([[pt, msg.hex(), sig] for pt, msg, sig in vectors])
    out = vm.run_micropython(_HEAP_CODE.format(vectors=vec, halves=halves), mounts=vm.firmware_mounts("sim"),
                             timeout=300)
    return [tuple(json.loads(ln[len("HEAP "):])) for ln in out.splitlines() if ln.startswith("HEAP ")]


def measure():
    key = keys.generate(keys.ES256)
    comps = [("main.py", b"import app\n"), ("core/controller.mpy", bytes(range(256)) * 64)]
    data = bundle.sign(key, comps, 1, "bench", "sim")
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "in.json").write_text(json.dumps({"point": keys.device_public_key(key).hex(),
                                                    "bundle": data.hex()}))
        Path(tmp, "p256_wnaf.py").write_text(WNAF_SOURCE)
        mounts = vm.firmware_mounts("sim", extra=[(Path(tmp), "/bench")])
        out = vm.run_micropython(_VM_CODE.format(rounds=ROUNDS, per=PER_ROUND, slice_runs=SLICE_RUNS),
                                 mounts=mounts, timeout=600)
    line = next(ln for ln in out.splitlines() if ln.startswith("RESULT "))
    res = json.loads(line[len("RESULT "):])
    res["s_key"], res["s_ver"] = [], []
    for ln in out.splitlines():
        if ln.startswith("SLICE "):
            _, name, entry = ln.split(" ", 2)
            res[name].append(json.loads(entry))
    if not res["ok"]:
        raise RuntimeError("the VM did not verify a good signature")
    return res


def board_estimate(r):
    """Seconds on the STM32F405 for work whose VM time and heap are r["verify"] and r["heap"]:
    the wNAF verify's emulated instruction count at one instruction per cycle, scaled by the
    larger of the time and heap ratios against that verify measured in the same run."""
    scale = max(r["verify"] / r["verify_old"], r["heap"] / float(r["heap_old"]))
    return OLD_BOARD_INSTRUCTIONS / BOARD_HZ * scale, scale


def slice_estimate(whole_s, sl):
    """(board seconds of the longest slice, its index) for slices sl ([point operations,
    heap bytes, [VM ms per run]]) of work whose board estimate is whole_s: each slice gets
    the larger of its share of the heap and its share of the VM time, as board_estimate
    scales a whole verify. A slice takes 0.1-0.5 ms in the VM, so one run reads 0 or 1 ms
    (ticks_ms steps) and the mean over the runs is its time; a reading above SLICE_CAP_MS is a
    run preempted on this shared machine (60-150 ms seen), not the slice's work, and counts
    as SLICE_CAP_MS."""
    times = []
    for _k, _h, runs in sl:
        times.append(sum(min(v, SLICE_CAP_MS) for v in runs) / float(len(runs)))
    heap = float(sum(x[1] for x in sl))
    total = sum(times) or 1.0
    worst = max((max(x[1] / heap, t / total), i) for i, (x, t) in enumerate(zip(sl, times)))
    return whole_s * worst[0], worst[1]


def rows():
    r = measure()
    ratio = r["verify"] / r["verify_old"]
    board_s, scale = board_estimate(r)
    key_s, key_scale = board_estimate({"verify": r["key"], "heap": r["heap_key"],
                                       "verify_old": r["verify_old"], "heap_old": r["heap_old"]})
    # the rest of the COSE and manifest check is ordinary bytecode: VM x 15 holds for it
    open_s = board_s + max(0.0, r["open"] - r["verify"]) * BOARD_FACTOR / 1000.0
    return [
        ("ES256 verify (P-256 comb, 2 tables per base: key tables kept), MicroPython VM",
         round(r["verify"], 2), "ms", None, None),
        ("ES256 verify, previous wNAF verifier, same run", round(r["verify_old"], 2), "ms", None, None),
        ("ES256 verify VM time, comb / wNAF (one-table comb: 0.33-0.63 x; instruction counts in the docs)",
         round(ratio, 2), "x", "<= 0.5 x", ratio <= 0.5),
        ("heap allocated per ES256 verify (VM, 16-bit digits as on the board)", r["heap"], "B",
         "<= {} B".format(HEAP_GOAL), r["heap"] <= HEAP_GOAL),
        ("heap allocated per ES256 verify, this design's ceiling (tests/host/test_p256_budget.py)",
         r["heap"], "B", "<= {} B".format(VERIFY_HEAP_BUDGET), r["heap"] <= VERIFY_HEAP_BUDGET),
        ("heap allocated per ES256 verify, one table per base (no room for update_key.tab)",
         r["heap_one"], "B", "<= {} B".format(VERIFY_HEAP_BUDGET_ONE_TABLE),
         r["heap_one"] <= VERIFY_HEAP_BUDGET_ONE_TABLE),
        ("heap allocated per verify, previous wNAF verifier", r["heap_old"], "B", None, None),
        ("ES256 verify, STM32F405 estimate (0.30 s emulated wNAF x {:.2f})".format(scale),
         round(board_s, 3), "s", "< {} s".format(GOAL_S), board_s < GOAL_S),
        ("COSE_Sign1 + manifest check, STM32F405 estimate (verify as above + rest VM x 15)",
         round(open_s, 3), "s", "< {} s".format(GOAL_S), open_s < GOAL_S),
        ("key tables built (once per key, then kept in update_key.tab: 2 x 241 doublings, 3 x 128 points), VM",
         round(r["key"], 1), "ms", None, None),
        ("key-table build, STM32F405 estimate (0.30 s emulated wNAF verify x {:.2f})".format(key_scale),
         round(key_s, 3), "s", None, None),
        ("heap allocated by a key-table build (VM; tables kept: 24 KiB)", r["heap_key"], "B", None, None),
        ("key loaded from update_key.tab (digest over 24 KiB checked), VM", round(r["cache"], 3), "ms",
         None, None),
        ("heap allocated by a key load from update_key.tab (VM; besides the file's 3 x 8 KiB, read in place)",
         r["heap_cache"], "B", None, None),
        ("whole {} kB bundle incl. digests, VM".format(r["size"] // 1024), r["all"], "ms", None, None),
    ] + slice_rows(r, key_s, board_s)


def slice_rows(r, key_s, verify_s):
    out = []
    for name, sl, whole in (("key-table build", r["s_key"], key_s), ("ES256 verify", r["s_ver"], verify_s)):
        s, i = slice_estimate(whole, sl)
        out += [
            ("{}: slices of at most {} point operations, one per control step".format(name, SLICE_OPS),
             len(sl), "slices", None, None),
            ("{}: most heap one slice allocates (VM)".format(name), max(x[1] for x in sl), "B", None, None),
            ("{}: longest slice, STM32F405 estimate ({:.3f} s x its share, slice {})".format(name, whole, i),
             round(s * 1000, 1), "ms", "<= {:g} ms".format(SLICE_GOAL_S * 1000), s <= SLICE_GOAL_S),
        ]
    out.append(("heap allocated per sliced ES256 verify (VM; the inverse in {} windows)".format(
        256 // 32), r["heap_sliced"], "B", None, None))
    return out
