"""bench/signing.py's slice figures: the slice size it names is the firmware's, and a
slice's board figure is its larger share of the whole."""
from bench import signing
from core import p256


def test_bench_names_the_firmware_slice_size():
    assert signing.SLICE_OPS == p256.SLICE_OPS


def test_slice_estimate_takes_the_larger_share_and_caps_preempted_readings():
    # three slices: equal heap; the second reads 1 ms in every run, the others 0 or 1,
    # the third once preempted for 150 ms (counted as SLICE_CAP_MS)
    sl = [[6, 1000, [0, 1, 0, 1]], [6, 1000, [1, 1, 1, 1]], [6, 1000, [0, 0, 0, 150]]]
    s, i = signing.slice_estimate(1.0, sl)
    times = [0.5, 1.0, signing.SLICE_CAP_MS / 4.0]
    assert i == 1 and abs(s - times[1] / sum(times)) < 1e-9
    # a slice that allocates most of the heap wins on its heap share
    sl[2][1] = 8000
    s, i = signing.slice_estimate(1.0, sl)
    assert i == 2 and abs(s - 0.8) < 1e-9
