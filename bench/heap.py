"""Firmware heap, measured in the MicroPython VM, against what a board has (docs/board-budget.md).

The VM is 32-bit like the board, so objects have the board's sizes, but its heap grows on
demand: the figures are `gc.mem_alloc()` after `gc.collect()` at each stage, never a
MemoryError. The firmware is imported as mpy-cross `.mpy` files (the form a board without
frozen modules loads from its filesystem, bytecode copied into RAM). From that one start-up:

- qstr bytes: `micropython.qstr_info()` before and after (pool entries + name text);
- loader share: the same tree with every module body cut to `return None`
  (host_tools/mpyheap.load_only) imported in the same VM set-up: the qstrs, the constant
  tables and constant objects, measured; plus the bytecode, raw-code records and child
  tables of every function (read from the .mpy files; the module body's own code is
  garbage once the import returns);
- runtime objects, frozen estimate = start-up heap - loader share (+ the module and globals
  objects a frozen module still has) - the bytecode kept by functions;
- ROMFS estimate = frozen estimate + what ROMFS still allocates: qstr pool entries (their
  text stays in flash), constant tables, raw codes, child tables, str/bytes headers.
"""

import ast
import json
import re
import shutil
import tempfile
from pathlib import Path

from host_tools import mpyheap, vm

FROZEN_GOAL = 48 * 1024      # runtime objects, pyboard (frozen) configuration
ROMFS_GOAL = 96 * 1024       # runtime objects + what ROMFS leaves in RAM
MPY_HEAP = 256 * 1024        # the .mpy form's heap for the 1-hour demo
HEAVY = ("app.install", "core.manifest", "core.cose", "core.p256")   # the update's download path
BLOCK_OBJ = 16               # a bytearray's own object, beside its data
UPDATE_PEAK_GOAL = 80 * 1024  # live heap while an update runs, frozen estimate (see docs/board-budget.md)
EMPTY_MODULES = 8            # load-only empty modules imported to measure a module's own objects

_PRELUDE = r'''
import gc, asyncio, os, sys, micropython, json
try:
    os.mkdir('/tmp/heap')
except OSError:
    pass
os.chdir('/tmp/heap')
async def heap(stage):
    await asyncio.sleep(0)   # the VM frees garbage only once Python yields to the host loop
    gc.collect()
    n = gc.mem_alloc()
    print('STAGE', stage, n)
    micropython.qstr_info()
    return n
await heap('empty')
'''

START = _PRELUDE + r'''
before = list(sys.modules)
from board import hal as H
from app import station as S
# wired as the pyboard is: the meter on RS-485 (Modbus) and the BMS on CAN
hal = H.Hal(ports=H.MemoryPorts(), clock=lambda: 0, buses={'meter': 'modbus', 'bms': 'can', 'ev_can': 'external'})
await heap('imported')
st = S.Station(hal, 0)
for i in range(200):
    st.tick(i * 50)
for k in hal.ports.outbox:   # what the station sent is on the wire, not in its RAM
    hal.ports.outbox[k] = b''
await heap('started')
print('MODULES', json.dumps([m for m in sys.modules if m not in before]))
'''

LOAD_ONLY = _PRELUDE + r'''
for m in {modules!r}:
    __import__(m)
await heap('loaded')
for i in range({n}):
    __import__('_e%d' % i)
await heap('empties')
'''

# Module by module, dependencies first: the increment each import adds (real or load-only).
PER_MODULE = _PRELUDE + r'''
for m in {modules!r}:
    __import__(m)
    await heap(m)
'''

UPDATE = r'''
import gc, sys, hashlib, json, os
ASYNC = hasattr(gc, 'mem_alloc')
HEAVY = {heavy!r}
os.chdir({cwd!r})
from board import hal as H
from app import station as S
good = open('good.v2gb', 'rb').read()
bad = open('bad.v2gb', 'rb').read()
out = {{}}
def stage(name, res=None):
    for k in st.hal.ports.outbox:   # the answers left on the wire
        st.hal.ports.outbox[k] = b''
    gc.collect()
    out[name] = {{'heap': gc.mem_alloc() if ASYNC else None,
                 'modules': [m for m in HEAVY if m in sys.modules],
                 'ok': None if res is None else res[0], 'code': None if res is None else res[1]}}
def bid(data):
    return hashlib.sha256(data[:8 + int.from_bytes(data[4:8], 'big')]).digest()[:16]
st = S.Station(H.Hal(ports=H.MemoryPorts(), clock=lambda: 0), 0)
def cmd(txn, op, args):   # a host command, through the station's command path
    return st.on_command({{'txn': txn, 'op': op, 'args': args}}, 0)
{pause}
stage('boot')
def push(data, upto):
    off, r, n = 0, None, 0
    while off < upto:
        n += 1
        r = cmd('c%d_%d' % (off, n), 'fota_chunk', {{'off': off, 'data': data[off:off + 1000]}})
        if r[0] and r[2].startswith('verifying'):
            # the head is checked one slice per control step: step until it is done
            while st.update.dl is not None and st.update.dl.job is not None:
                st.tick(0)
            continue
        if not r[0]:
            return r
        off = r[3]['next']
    return r
r = cmd('b1', 'fota_begin', {{'size': len(bad), 'id': bid(bad)}})
r = push(bad, len(bad))
{pause}
stage('refused', r)
r = cmd('b2', 'fota_begin', {{'size': len(good), 'id': bid(good)}})
r = push(good, len(good) // 2)
{pause}
stage('download', r)
off = cmd('s', 'fota_status', {{}})[3]['dl']['next']
while off < len(good):
    r = cmd('d%d' % off, 'fota_chunk', {{'off': off, 'data': good[off:off + 1000]}})
    off = r[3]['next']
r = cmd('f', 'fota_finish', {{'reboot': False}})
{pause}
stage('installed', r)
r = cmd('b3', 'fota_begin', {{'size': len(good), 'id': bid(good)}})
cmd('c0', 'fota_chunk', {{'off': 0, 'data': good[:1000]}})
r = cmd('a', 'fota_abort', {{}})
{pause}
stage('aborted', r)
print('UPDATE', json.dumps(out))
'''

# The peak while an update runs: the station started as in START, then a whole update
# (begin, chunks with a control step after each, the key's tables and the head's check one
# slice per control step, finish). Around every command and step: the live heap before it
# (collected) and the heap at its end with the collector off, i.e. the live heap before plus
# everything the step allocated, garbage included (the most a step can need at once).
UPDATE_PEAK = _PRELUDE + r"""
os.chdir('/work')
import hashlib
from board import hal as H
from app import station as S
hal = H.Hal(ports=H.MemoryPorts(), clock=lambda: 0, buses={{'meter': 'modbus', 'bms': 'can', 'ev_can': 'external'}})
st = S.Station(hal, 0)
for i in range(200):
    st.tick(i * 50)
def clear():
    for k in hal.ports.outbox:
        hal.ports.outbox[k] = b''
clear()
HEAVY = {heavy!r}
size = os.stat('bundle.v2gb')[6]
f = open('bundle.v2gb', 'rb')
n = int.from_bytes(f.read(8)[4:8], 'big')
f.seek(0)
h = hashlib.sha256(f.read(8 + n))
bid = h.digest()[:16]
h = None
u = st.update
recs = []
def cmd(txn, op, args):
    return st.on_command({{'txn': txn, 'op': op, 'args': args}}, 0)
async def step(label, fn, *args):
    await asyncio.sleep(0)
    gc.collect()
    a0 = gc.mem_alloc()
    m0 = sum(1 << i for i, m in enumerate(HEAVY) if m in sys.modules)
    gc.disable()
    r = fn(*args)
    a1 = gc.mem_alloc()
    gc.enable()
    m1 = sum(1 << i for i, m in enumerate(HEAVY) if m in sys.modules)
    recs.append((label, a0, a1, m0, m1))
    clear()
    return r
def phase():
    d = u.dl
    if d is None or d.job is None:
        return 'tick'
    if u.key is None:
        return 'tables'
    return 'verify' if d.checked is not None else 'tick'
await heap('rest')
r = await step('begin', cmd, 'b', 'fota_begin', {{'size': size, 'id': bid}})
assert r[0], r
off = 0
while off < size:
    f.seek(off)
    r = await step('chunk', cmd, 'c%d' % off, 'fota_chunk', {{'off': off, 'data': f.read(1000)}})
    assert r[0], r
    off = r[3]['next']
    await step(phase(), st.tick, 0)
    while u.dl is not None and u.dl.job is not None and u.dl.checked is not None:
        await step(phase(), st.tick, 0)
tabs = [len(t) for t in u.key._tab if isinstance(t, (bytes, bytearray))]   # held in RAM
r = await step('finish', cmd, 'f', 'fota_finish', {{'reboot': False}})
assert r[0], r
f.close()
await heap('after')
for m in HEAVY:
    __import__(m)
await heap('modules')
print('PEAK', json.dumps({{'recs': recs, 'tables': tabs}}))
"""

# The update's modules imported load-only after the station's (their loader share, per module).
LOAD_HEAVY = _PRELUDE + r"""
for m in {modules!r}:
    __import__(m)
await heap('loaded')
for m in {heavy!r}:
    __import__(m)
    await heap(m)
"""


DEMO = r'''
import gc, json, asyncio
from board import hal as H
from app import station as S
st = S.Station(H.Hal(ports=H.MemoryPorts(), clock=lambda: 0), 0)
def cmd(txn, op, args):   # a host command, through the station's command path
    return st.on_command({{'txn': txn, 'op': op, 'args': args}}, 0)
from board import scenario_run
summary = []
def keep(line):
    if '"summary"' in line:
        summary.append(line)
r = await scenario_run.run_async(json.loads({scenario!r}), out=keep)
print('DEMO', json.dumps({{'peak': r.heap_peak, 'start': r.heap_start}}))
'''


def _stages(out):
    """{stage: (heap, qstr total bytes, qstr text bytes, qstr count)} from a VM run's output."""
    stages, name = {}, None
    for line in out.splitlines():
        if line.startswith("STAGE "):
            _, name, n = line.split()
            stages[name] = [int(n)]
        elif line.startswith("qstr pool:") and name:
            f = dict(re.findall(r"(\w+)=(\d+)", line))
            stages[name] += [int(f["n_total_bytes"]), int(f["n_str_data_bytes"]), int(f["n_qstr"])]
    return stages


def _tagged(out, tag):
    for line in out.splitlines():
        if line.startswith(tag + " "):
            return json.loads(line[len(tag) + 1:])
    raise RuntimeError("no {} line from the VM: {}".format(tag, out[-400:]))


class Trees:
    """The firmware compiled by mpy-cross (sim board), and its load-only copy."""

    def __init__(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="v2g-heap-"))
        self.full = mpyheap.compile_tree(self.tmp / "full")
        self.info = mpyheap.tree_info(self.full)
        self.lo = self.tmp / "lo"
        shutil.copytree(self.full, self.lo)
        for p in self.lo.rglob("*.mpy"):
            p.write_bytes(mpyheap.load_only(p.read_bytes()))
        empty = self.tmp / "empty.py"
        empty.write_text("")
        for i in range(EMPTY_MODULES):
            mpyheap.compile_file_to(empty, self.lo / "_e{}.mpy".format(i))

    def run(self, code, lo=False, timeout=300, heap=None):
        return vm.run_micropython(code, mounts=[(self.lo if lo else self.full, "/flash")],
                                  timeout=timeout, heap=heap)

    def close(self):
        shutil.rmtree(self.tmp, ignore_errors=True)


def measure(trees=None):
    """The start-up figures (bytes) of the sim board's firmware in the .mpy form."""
    own = trees is None
    trees = trees or Trees()
    try:
        out = trees.run(START)
        st = _stages(out)
        modules = _tagged(out, "MODULES")
        ours = [m for m in modules if m in trees.info]
        lo = _stages(trees.run(LOAD_ONLY.format(modules=modules, n=EMPTY_MODULES), lo=True))
    finally:
        if own:
            trees.close()
    per_module_objects = (lo["empties"][0] - lo["loaded"][0]) // EMPTY_MODULES
    heap = st["started"][0] - st["empty"][0]
    imported = st["imported"][0] - st["empty"][0]
    loader_measured = lo["loaded"][0] - lo["empty"][0]
    kept = sum(trees.info[m].kept_code for m in ours)
    loader = loader_measured - per_module_objects * len(modules) + kept
    qstr_total = st["started"][1] - st["empty"][1]
    qstr_text = st["started"][2] - st["empty"][2]
    frozen = heap - loader
    romfs_extra = (qstr_total - qstr_text) + sum(trees.info[m].romfs_ram() for m in ours)
    return {
        "empty": st["empty"][0], "heap": heap, "imported": imported, "station": heap - imported,
        "qstr_bytes": qstr_total, "qstr_text": qstr_text,
        "qstrs": st["started"][3] - st["empty"][3],
        "loader_measured": loader_measured, "per_module_objects": per_module_objects,
        "modules": len(modules), "code_kept": kept, "loader": loader,
        "frozen": frozen, "romfs": frozen + romfs_extra, "module_list": modules,
    }


def _deps(path, known):
    """Our modules a file imports at its top level."""
    deps = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            deps += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            deps.append(node.module)
            deps += ["{}.{}".format(node.module, a.name) for a in node.names]
    return [d for d in deps if d in known]


def import_order(modules):
    """The modules ordered dependencies first (top-level imports, read from the sources)."""
    src = {}
    for m in modules:
        parts = m.split(".")
        base = vm.BOARDS / "sim" if parts[0] == "board" else vm.FIRMWARE / parts[0]
        p = base.joinpath(*parts[1:])
        src[m] = p / "__init__.py" if p.is_dir() else p.with_suffix(".py")
    order, seen = [], set()

    def visit(m):
        if m in seen:
            return
        seen.add(m)
        for d in _deps(src[m], src) if src[m].exists() else []:
            visit(d)
        order.append(m)
    for m in sorted(modules):
        visit(m)
    return order


def per_module(trees=None):
    """[(module, heap it adds in the .mpy form, loader share measured, runtime objects)]
    imported one by one, dependencies first: where the resident bytes come from."""
    own = trees is None
    trees = trees or Trees()
    try:
        order = import_order([m for m in trees.info if not m.startswith("_")])
        real = _stages(trees.run(PER_MODULE.format(modules=order)))
        lo = _stages(trees.run(PER_MODULE.format(modules=order), lo=True))
    finally:
        if own:
            trees.close()
    rows, prev_r, prev_l = [], real["empty"][0], lo["empty"][0]
    for m in order:
        r, ld = real[m][0] - prev_r, lo[m][0] - prev_l
        prev_r, prev_l = real[m][0], lo[m][0]
        rows.append((m, r, ld, r - ld - trees.info[m].kept_code))
    return rows


def _bundles(tmp):
    from signing import bundle as sb
    from signing import keys
    key = keys.generate()
    comps = [("main.py", b"import app\n" * 50), ("core/blob.bin", bytes(range(256)) * 12)]
    good = sb.sign(key, comps, 5, "9.0.0", "sim", 0)
    n = 8 + int.from_bytes(good[4:8], "big")
    bad = bytearray(good)
    bad[n - 1] ^= 1                   # last byte of the signature
    (tmp / "good.v2gb").write_bytes(good)
    (tmp / "bad.v2gb").write_bytes(bytes(bad))
    (tmp / "update_key.bin").write_bytes(keys.device_public_key(key))


def update_stages(interp="micropython", trees=None):
    """Heap and loaded download-path modules at boot, after a refused bundle, mid-download,
    after the install and after an abort. MicroPython: the .mpy tree (or sources when
    trees is None); CPython: a fresh interpreter on the sources (modules only)."""
    import subprocess
    import sys
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        _bundles(tmp)
        if interp == "micropython":
            code = UPDATE.format(heavy=HEAVY, cwd="/work", pause="await asyncio.sleep(0)")
            code = "import asyncio\n" + code
            mounts = ([(trees.full, "/flash")] if trees else vm.firmware_mounts("sim")) + [(tmp, "/work")]
            out = vm.run_micropython(code, mounts=mounts, timeout=300)
        else:
            code = UPDATE.format(heavy=HEAVY, cwd=str(tmp), pause="pass")
            boot = "from host_tools import vm; vm.firmware_sys_path('sim')\n"
            proc = subprocess.run([sys.executable, "-c", boot + code], capture_output=True, text=True,
                                  timeout=300, cwd=str(vm.ROOT))
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr[-2000:])
            out = proc.stdout
    return _tagged(out, "UPDATE")


def _peak_files(tmp, cached, components):
    """The update key, a bundle and, when cached, the key's tables file as a previous update
    left it. components 64: the head's worst case (64 components with names of 62 characters:
    a head of about 7 kB and the largest manifest a controller accepts); 1: one component
    (as a ROMFS image is)."""
    from signing import bundle as sb
    from signing import keys

    from core import p256
    key = keys.generate()
    point = keys.device_public_key(key)
    comps = [("app/lib/a_component_name_as_long_as_a_bundle_may_have_{:03d}.mpy".format(i),
              bytes([i]) * (12800 // components)) for i in range(components)]
    (tmp / "bundle.v2gb").write_bytes(sb.sign(key, comps, 5, "9.0.0", "sim", 0))
    (tmp / "update_key.bin").write_bytes(point)
    if cached:
        out = []
        x, y = p256.parse_point(point)
        p256.run(p256.key_tables_steps(x, y, out, 2))
        (tmp / "update_key.tab").write_bytes(p256.cache_head(point, out[0]) + b"".join(out[0]))


def update_peak(trees, cached=True, m=None, components=64):
    """The live heap while a whole update runs, .mpy form and frozen estimate (bytes over the
    empty VM), and its parts. cached: the key's tables read from update_key.tab (every update
    after the key's first); else built and written (the first)."""
    m = m or measure(trees)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        _peak_files(tmp, cached, components)
        out = vm.run_micropython(UPDATE_PEAK.format(heavy=HEAVY),
                                 mounts=[(trees.full, "/flash"), (tmp, "/work")], timeout=600)
    st = _stages(out)
    res = _tagged(out, "PEAK")
    lo = _stages(trees.run(LOAD_HEAVY.format(modules=m["module_list"], heavy=HEAVY), lo=True))
    # what the loader puts in RAM per update module (qstrs, constants, G's 8 KiB table) and
    # the bytecode its functions keep: in flash on a frozen build, so left out of the estimate
    share, prev = [], lo["loaded"][0]
    for name in HEAVY:
        share.append(lo[name][0] - prev - m["per_module_objects"] + trees.info[name].kept_code)
        prev = lo[name][0]
    empty = st["empty"][0]
    rest = st["rest"][0] - empty

    # the station at rest as measure() has it (this run's longer script grows the qstr pool
    # before "empty", which moves about 1.4 kB of pool out of the window), plus what the
    # update adds in this run, less the update modules' loader share
    def frozen(n, mods):
        return m["frozen"] + n - st["rest"][0] - sum(v for i, v in enumerate(share) if mods >> i & 1)
    # (label, live before, most at once, modules loaded before, after): frozen estimate; a
    # module loaded or dropped during the step counts as loaded for its "most at once"
    recs = [(r[0], frozen(r[1], r[3]), frozen(r[2], r[3] | r[4])) for r in res["recs"]]
    top = max(recs, key=lambda r: r[2])
    modules = st["modules"][0] - st["after"][0] - sum(share)
    tables = sum(res["tables"]) + len(res["tables"]) * BLOCK_OBJ
    rest_f = m["frozen"]
    verify = [r[2] - r[1] for r in recs if r[0] == "verify"]
    built = [r[2] - r[1] for r in recs if r[0] == "tables"]
    return {
        "rest_mpy": rest, "rest": rest_f,
        "peak_mpy": max(r[2] for r in res["recs"]) - empty,
        "peak": top[2], "peak_at": top[0],
        "settled": max(r[1] for r in recs),
        "modules": modules, "modules_loader": sum(share), "tables": tables,
        "state": top[1] - rest_f - modules - tables, "step": top[2] - top[1],
        "verify_slices": len(verify), "verify_slice_max": max(verify, default=0),
        "table_slices": len(built), "table_slice_max": max(built, default=0),
        "after_mpy": st["after"][0] - st["rest"][0],
        "recs": recs,
    }


def demo_hour():
    """The demo scenario (scenarios/demo.toml, 10 minutes) played six times over one hour."""
    from host_tools import scenario
    sc = scenario.load(vm.ROOT / "scenarios" / "demo.toml")
    period = sc["duration_ms"]
    events = []
    for k in range(3600_000 // period):
        for e in sc["events"]:
            args = dict(e["args"])
            if "txn" in args:
                args["txn"] = "{}-{}".format(args["txn"], k)
            events.append({"t_ms": e["t_ms"] + k * period, "do": e["do"], "args": args})
    sc.update(duration_ms=3600_000, events=events, name="demo-hour")
    return sc


def demo_peak(trees):
    """Live-heap peak (absolute) of the 1-hour demo in the .mpy form, the station imported
    and started beside the scenario's controller and plant."""
    out = trees.run(DEMO.format(scenario=json.dumps(demo_hour())), timeout=600, heap=MPY_HEAP)
    return _tagged(out, "DEMO")


def rows():
    trees = Trees()
    try:
        m = measure(trees)
        upd = update_stages("micropython", trees)
        peak = update_peak(trees, True, m, 1)
        first = update_peak(trees, False, m, 1)
        wide = update_peak(trees, True, m, 64)
        demo = demo_peak(trees)
    finally:
        trees.close()
    kb = "{:.1f} kB".format
    during = upd["download"]["heap"] - upd["boot"]["heap"]
    released = upd["installed"]["heap"] - upd["boot"]["heap"]
    return [
        ("VM heap before the firmware (interpreter, this run's code)", m["empty"], "B", "", None),
        ("heap in the .mpy form after start-up (imports + station, bytecode in RAM)", m["heap"], "B",
         "(a 96 kB board cannot)", None),
        ("  of which module imports / station objects (meter and BMS buses wired)", "{} / {}".format(m["imported"], m["station"]),
         "B", "", None),
        ("qstrs the firmware interns ({} names: pool + text)".format(m["qstrs"]), m["qstr_bytes"], "B",
         "(frozen: in flash)", None),
        ("loader share (qstrs, constants measured; function bytecode {})".format(kb(m["code_kept"] / 1024)),
         m["loader"], "B", "", None),
        ("runtime objects, frozen estimate (pyboard)", m["frozen"], "B",
         "<= {} B".format(FROZEN_GOAL), m["frozen"] <= FROZEN_GOAL),
        ("runtime objects, ROMFS estimate", m["romfs"], "B", "<= {} B".format(ROMFS_GOAL),
         m["romfs"] <= ROMFS_GOAL),
        ("update download path while an update runs (.mpy form, over boot)", during, "B", "", None),
        ("heap after the update, over boot (download path released)", released, "B", "", None),
        ("download-path modules loaded at boot / during / after", "{} / {} / {}".format(
            len(upd["boot"]["modules"]), len(upd["download"]["modules"]), len(upd["installed"]["modules"])),
         "", "0 / {} / 0".format(len(HEAVY)),
         not upd["boot"]["modules"] and not upd["installed"]["modules"]
         and len(upd["download"]["modules"]) == len(HEAVY)),
        ("live heap peak while an update runs, frozen estimate (tables from update_key.tab, "
         "one-component bundle)", peak["peak"], "B", "<= {} B".format(UPDATE_PEAK_GOAL),
         peak["peak"] <= UPDATE_PEAK_GOAL),
        ("  station at rest / update modules / key tables / download state / largest step ({})".format(
            peak["peak_at"]), "{rest} / {modules} / {tables} / {state} / {step}".format(**peak), "B", "", None),
        ("  the same in the .mpy form (update modules' bytecode and G's table in RAM)", peak["peak_mpy"], "B",
         "", None),
        ("  first update of a key (its tables built, {} slices)".format(first["table_slices"]), first["peak"],
         "B", "<= {} B".format(UPDATE_PEAK_GOAL), first["peak"] <= UPDATE_PEAK_GOAL),
        ("  64-component bundle (largest manifest; its decoding in the {} step's last slice, upper bound)".format(
            wide["peak_at"]),
         wide["peak"], "B", "<= {} B".format(UPDATE_PEAK_GOAL), wide["peak"] <= UPDATE_PEAK_GOAL),
        ("live heap peak, 1 h demo, .mpy form (VM total incl. driver and plant)", demo["peak"], "B",
         "<= {} B".format(MPY_HEAP), demo["peak"] <= MPY_HEAP),
    ]


if __name__ == "__main__":
    t = Trees()
    try:
        print(json.dumps(measure(t), indent=1))
        for r in per_module(t):
            print("{:24} {:7} {:7} {:7}".format(*r))
    finally:
        t.close()
