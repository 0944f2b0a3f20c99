"""The tel message encoded in place (core/telemetry.py): error lists read as cbor.dumps
writes them, and a sample carrying errors allocates nothing once its fields are learnt."""
import sys

from core import cbor, errors, link
from core.telemetry import TelBatch

MICROPYTHON = sys.implementation.name == 'micropython'


def _sample(tb, mask):
    tb.begin()
    tb.put('t_ms', 1000)
    tb.put_errors('errors', mask)
    tb.put('mode', 'charging')
    return tb.end()


def test_every_error_code_reads_back_as_its_text():
    all_codes = (1 << len(errors.CODES)) - 1
    for mask in (0, errors.E009, errors.E604 | errors.E010, all_codes):
        tb = TelBatch(link.MAX_FRAME - 4, 3)
        assert _sample(tb, mask)
        got = cbor.loads(bytes(tb.buf[:tb.payload()]))
        want = [errors.CODES[i] for i in range(len(errors.CODES)) if mask & (1 << i)]
        assert got == link.tel([{'errors': want, 'mode': 'charging', 't_ms': 1000}])
        assert bytes(tb.buf[:tb.payload()]) == cbor.dumps(got)


def test_a_sample_that_does_not_fit_leaves_the_batch_as_it_was():
    tb = TelBatch(60, 3)
    assert _sample(tb, 0)
    before = bytes(tb.buf[:tb.payload()])
    assert not _sample(tb, (1 << len(errors.CODES)) - 1)   # 24 codes: far past 60 bytes
    assert bytes(tb.buf[:tb.payload()]) == before and tb.count == 1


def test_a_sample_with_errors_allocates_nothing():
    tb = TelBatch(link.MAX_FRAME - 4, 3)
    _sample(tb, errors.E010)          # the fields and the text are learnt here
    tb.clear()
    if not MICROPYTHON:
        return                        # every int past 256 is an object on CPython
    import micropython
    ok = True
    masks = (errors.E010 | errors.E101, errors.E604, (1 << len(errors.CODES)) - 1)
    micropython.heap_lock()
    try:
        for mask in masks:
            tb.clear()
            _sample(tb, mask)
    except MemoryError:
        ok = False
    finally:
        micropython.heap_unlock()
    assert ok
