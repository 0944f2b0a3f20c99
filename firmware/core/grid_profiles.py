"""Grid-code settings by profile (the GRID_PROFILE config key).

Voltages are per-mille of the nominal voltage (1100 = 1.10 pu), frequencies mHz,
times ms. docs/grid.md gives the source of every number and says which ones are
our choice rather than a default printed in the standard.

Trip stages are (kind, threshold, clearing_ms); kind is one of the constants
below. A stage is "outside" when the measurement is strictly beyond its
threshold (above for OV/OF, below for UV/UF). Order matters: when several stages
complete on the same sample, the first one listed names the trip.
"""
try:
    from micropython import const
except ImportError:  # CPython (host tools, tests): const() is the value
    def const(x):
        return x

OV = const(0)   # over-voltage (per-mille of nominal)
UV = const(1)   # under-voltage (per-mille of nominal)
OF = const(2)   # over-frequency (mHz)
UF = const(3)   # under-frequency (mHz)

# IEEE 1547-2018 default frequency trip settings, identical for categories I-III.
_IEEE_F = (
    (OF, 62000, 160),      # OF2
    (OF, 61200, 300000),   # OF1
    (UF, 56500, 160),      # UF2
    (UF, 58500, 300000),   # UF1
)

NAMES = ('IEEE1547_CAT_I_60HZ', 'IEEE1547_CAT_II_60HZ', 'IEEE1547_CAT_III_60HZ', 'EN50549_50HZ')


# Keys of a profile dict:
#   nominal_mhz
#   stages            trip stages, see above
#   ov_mean_pm        10-minute mean over-voltage threshold, 0 = none
#   es_v_pm           enter-service voltage window (lo, hi), inclusive
#   es_f_mhz          enter-service frequency window (lo, hi), inclusive
#   es_delay_ms       the window must hold this long
#   es_ramp_ms        then the allowed current ramps 0 -> full over this
#   db_mhz            adjustable range of the droop deadband (lo, hi)
#   droop_mpct        adjustable range of the droop, 0.001 % (lo, hi)
def profile(name):
    """A new dict of the profile's settings (keys above); None for an unknown name.

    Made on each call and not kept (settings change seldom): the tables stay constants
    (flash, when frozen), where dicts built at import took 0.6 kB of heap."""
    if name == 'IEEE1547_CAT_I_60HZ':
        return _ieee1547((
            (OV, 1200, 160),     # OV2
            (OV, 1100, 2000),    # OV1
            (UV, 450, 160),      # UV2
            (UV, 700, 2000),     # UV1
        ), 3000)
    if name == 'IEEE1547_CAT_II_60HZ':
        return _ieee1547((
            (OV, 1200, 160),
            (OV, 1100, 2000),
            (UV, 450, 160),
            (UV, 700, 10000),
        ), 3000)
    if name == 'IEEE1547_CAT_III_60HZ':
        return _ieee1547((
            (OV, 1200, 160),
            (OV, 1100, 13000),
            (UV, 500, 2000),
            (UV, 880, 21000),
        ), 2000)
    if name == 'EN50549_50HZ':
        return {
            'nominal_mhz': 50000,
            'stages': (
                (OV, 1150, 100),     # over-voltage stage 2
                (UV, 850, 3000),     # under-voltage stage 1 (our choice, see docs/grid.md)
                (OF, 51500, 100),
                (UF, 47500, 100),
            ),
            'ov_mean_pm': 1100,      # 10-minute mean over-voltage
            'es_v_pm': (850, 1100),
            'es_f_mhz': (49900, 50100),
            'es_delay_ms': 60000,
            'es_ramp_ms': 600000,    # 10 % of rated per minute
            'db_mhz': (200, 500),    # LFSM-O from 50.2..50.5 Hz, LFSM-U from 49.8..49.5 Hz
            'droop_mpct': (2000, 12000),
        }
    return None


def _ieee1547(voltage_stages, droop_lo_mpct):
    """IEEE 1547-2018: the category's voltage stages, then the common frequency stages."""
    return {
        'nominal_mhz': 60000,
        'stages': voltage_stages + _IEEE_F,
        'ov_mean_pm': 0,
        'es_v_pm': (917, 1050),
        'es_f_mhz': (59500, 60100),
        'es_delay_ms': 300000,
        'es_ramp_ms': 300000,
        'db_mhz': (17, 1000),
        'droop_mpct': (droop_lo_mpct, 5000),
    }


def profiles():
    """{name: profile(name)} of every profile (for host tools; CPython keeps NAMES order)."""
    return {n: profile(n) for n in NAMES}


# 10-minute mean: blocks of 3 s (the mean is refreshed at least every 3 s),
# 200 of them make 10 minutes.
MEAN_BLOCK_MS = const(3000)
MEAN_BLOCKS = const(200)
