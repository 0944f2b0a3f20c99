"""The board's RAM budgets (docs/board-budget.md), measured in the MicroPython VM.

The update's download path is loaded only while an update runs (both interpreters); the
runtime objects stay within the frozen and ROMFS budgets by the estimate bench/heap.py
makes; the firmware in its .mpy form plays one hour of the demo within 256 KiB.
"""

import pytest

from bench import heap
from host_tools import mpy_check, mpyheap, vm


@pytest.fixture(scope="module")
def trees():
    t = heap.Trees()
    yield t
    t.close()


@pytest.mark.parametrize("interp", ["cpython", "micropython"])
def test_download_path_is_loaded_only_while_an_update_runs(interp):
    s = heap.update_stages(interp)
    assert s["boot"]["modules"] == []
    # a bundle with a bad signature is refused, and the path it loaded is dropped again
    assert s["refused"]["ok"] is False and s["refused"]["code"] == "V2G-601"
    assert s["refused"]["modules"] == []
    assert sorted(s["download"]["modules"]) == sorted(heap.HEAVY) and s["download"]["ok"]
    assert s["installed"]["ok"] and s["installed"]["modules"] == []
    assert s["aborted"]["ok"] and s["aborted"]["modules"] == []
    if interp == "micropython":
        # released means the heap comes back: what stays is update.json's record and the log
        during = s["download"]["heap"] - s["boot"]["heap"]
        after = s["installed"]["heap"] - s["boot"]["heap"]
        # usually about 4 kB stays; MicroPython's collector is conservative, so a stale word
        # on the stack can keep a released 8 KiB key table alive a while longer (12.8 kB seen
        # once): the modules above are the release, this bounds what is left
        assert during > 30_000 and after < 16_000, (during, after)


def test_runtime_objects_within_the_frozen_and_romfs_budgets(trees):
    m = heap.measure(trees)
    assert m["frozen"] <= heap.FROZEN_GOAL, m
    assert m["romfs"] <= heap.ROMFS_GOAL, m
    # the estimate subtracts what the loader put on the heap, never more than was there
    assert 0 < m["frozen"] < m["romfs"] < m["heap"]


def test_peak_heap_while_an_update_runs_leaves_the_board_its_margin(trees):
    # a whole update (begin, head, the key's tables from update_key.tab, the verify in
    # slices, body, finish), the station running beside it: the most live at once, frozen
    # estimate, stays below the pyboard's 96 KiB by the margin docs/board-budget.md gives
    p = heap.update_peak(trees, cached=True, components=1)
    assert p["verify_slices"] > 10 and p["tables"] > 0, p
    assert 0 < p["rest"] < p["settled"] < p["peak"] < p["peak_mpy"], p
    assert p["peak"] <= heap.UPDATE_PEAK_GOAL, {k: v for k, v in p.items() if k != "recs"}


def test_mpy_form_plays_an_hour_of_the_demo_within_256_kib(trees):
    d = heap.demo_peak(trees)
    assert d["start"] and d["peak"] <= heap.MPY_HEAP, d


def test_load_only_mpy_runs_the_loader_and_nothing_else(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("X = [1, 2, 3]\n\ndef f(a):\n    return a + 1\n\nclass C:\n    def g(self):\n        return 2\n")
    mpyheap.compile_file_to(src, tmp_path / "m.mpy")
    data = (tmp_path / "m.mpy").read_bytes()
    info = mpyheap.parse(data)
    assert info.raw_codes == 4                       # module body, f, C's body, g
    assert info.kept_bytecode < info.bytecode and info.kept_code >= info.kept_bytecode
    (tmp_path / "lo").mkdir()
    (tmp_path / "lo" / "m.mpy").write_bytes(mpyheap.load_only(data))
    out = vm.run_micropython("import m\nprint(sorted(k for k in dir(m) if not k.startswith('__')))",
                             mounts=[(tmp_path / "lo", "/flash")])
    assert out.strip() == "[]"
    out = vm.run_micropython("import m\nprint(m.f(1), m.C().g(), m.X)", mounts=[(tmp_path, "/flash")])
    assert out.strip() == "2 2 [1, 2, 3]"


def test_mpy_check_compiles_the_update_manifest_module():
    # only the folders' own freeze manifests are build files; core/manifest.py is firmware
    names = {p.relative_to(vm.ROOT).as_posix() for p in mpy_check.firmware_sources("sim")}
    assert "firmware/core/manifest.py" in names
    assert "firmware/manifest.py" not in names


def test_kept_bytecode_model_matches_what_deleting_the_functions_frees(tmp_path):
    # 64 functions: deleting them frees their function objects (16 B each) and exactly the
    # bytecode and tables the model says they keep
    body = "def f{0}(a, b):\n    x = [a, b, {0}]\n    if a > b:\n        return x\n    return {{'k': a * {0}}}\n\n"
    (tmp_path / "m.py").write_text("".join(body.format(i) for i in range(64)))
    (tmp_path / "lib").mkdir()
    mpyheap.compile_file_to(tmp_path / "m.py", tmp_path / "lib" / "m.mpy")
    info = mpyheap.parse((tmp_path / "lib" / "m.mpy").read_bytes())
    code = ("import gc, asyncio\nimport m\nawait asyncio.sleep(0)\ngc.collect()\na = gc.mem_alloc()\n"
            "for i in range(64):\n    delattr(m, 'f%d' % i)\n"
            "await asyncio.sleep(0)\ngc.collect()\nprint(a - gc.mem_alloc())\n")
    freed = int(vm.run_micropython(code, mounts=[(tmp_path / "lib", "/flash")]).split()[-1])
    assert abs(freed - (info.kept_code + 64 * mpyheap.BLOCK)) <= 4 * mpyheap.BLOCK, (freed, info.kept_code)



def test_constant_tuples_cost_what_the_loader_allocates(tmp_path):
    # Ints inside a constant tuple are stored in the .mpy as text; the loader makes small
    # ints of them (no heap object) and heap ints only past 2**30. The model's figure for
    # such a table matches what loading it takes in the VM (600 small ints would be 19 kB
    # more if each were an object; the qstrs the imports intern are left out).
    pairs = ", ".join("({}, {})".format(i, i * 7000) for i in range(300))
    big = ", ".join(str((1 << 40) + i) for i in range(8))
    (tmp_path / "a.py").write_text("X = ({})\nY = ({})\n".format(pairs, big))
    (tmp_path / "b.py").write_text("")
    (tmp_path / "lib").mkdir()
    model = {}
    (tmp_path / "w.py").write_text("")
    for m in ("w", "b", "a"):
        mpyheap.compile_file_to(tmp_path / (m + ".py"), tmp_path / (m + ".mpy"))
        data = (tmp_path / (m + ".mpy")).read_bytes()
        info = mpyheap.parse(data)
        model[m] = info.const_objects() + info.tables
        (tmp_path / "lib" / (m + ".mpy")).write_bytes(mpyheap.load_only(data))
    code = ("import gc, asyncio, micropython\nasync def h(name):\n    await asyncio.sleep(0)\n"
            "    gc.collect()\n    print('STAGE', name, gc.mem_alloc())\n    micropython.qstr_info()\n"
            "import w\nawait h('w')\nimport b\nawait h('b')\nimport a\nawait h('a')\n")
    st = heap._stages(vm.run_micropython(code, mounts=[(tmp_path / "lib", "/flash")]))
    # the first stage frees the VM's start-up garbage; the names a interns are not counted
    a = (st["a"][0] - st["a"][1]) - (st["b"][0] - st["b"][1])
    # plus the module object and its globals (bench/heap.py measures about 90 B)
    assert model["a"] > 300 * mpyheap.BLOCK and 0 <= a - model["a"] <= 256, (a, model["a"])


PARTS = heap._PRELUDE + r'''
from core.telemetry import TelBatch
from core import link, errors
b = await heap('before')
lk = link.Link(lambda b: None)
a = await heap('link')
print('PART link', a - b)
tb = TelBatch(link.MAX_FRAME - 4, 3)
tb.begin()
for k in {keys!r}:
    tb.put(k, 1)
tb.put_errors('errors', errors.E010)
tb.end()
print('PART tel', await heap('tel') - a)
'''


def test_the_link_and_the_telemetry_batch_keep_little_beyond_their_frame_buffers():
    # the station's telemetry fields, as Station.sample puts them
    keys = ("t_ms", "cp", "mode", "contactor", "pwm_pm", "ma", "mv", "mhz", "w", "soc_pm", "evse_dc",
            "bat_dc", "lim_chg_ma", "lim_chg_src", "lim_dis_ma", "lim_dis_src", "req_ma", "e_in_wh",
            "e_out_wh", "dis_cap_wh", "cool", "led")
    out = vm.run_micropython(PARTS.format(keys=keys), timeout=120)
    got = {ln.split()[1]: int(ln.split()[2]) for ln in out.splitlines() if ln.startswith("PART ")}
    # the link: received COBS, the decoded / outgoing frame (one buffer), outgoing COBS (about
    # 1,040 B each), its counters and the two fast-path maps
    assert got["link"] <= 3_900, got
    # the batch: its 1 kB frame, the learnt keys' CBOR in one buffer, the error codes' in another
    assert got["tel"] <= 2_600, got
