"""Arbitration of charge and discharge limits, each with the source that sets it.

Every source has a fixed slot in two preallocated lists, `charge` and `discharge`, which
the controller writes directly each step (NO_LIMIT: the source does not limit); resolve()
takes the minimum of each list. The first source in SOURCES wins a tie, so the order puts
the physical ratings first and the protective overrides after them.
"""
try:
    from micropython import const
except ImportError:  # CPython (host tools, tests): const() is the value
    def const(x):
        return x

NO_LIMIT = const(1000000)   # 1000 A: "this source does not limit"

STATION = const(0)     # MAX_CHARGE_AMPS / MAX_DISCHARGE_AMPS
CABLE = const(1)       # proximity pin rating
BMS = const(2)         # vehicle allowance over CAN
THERMAL = const(3)     # EVSE / battery derating
GRID = const(4)        # grid module: trip, enter-service, droop caps
CSMS = const(5)        # charging-profile limit from the host
SETPOINT = const(6)    # SoC target logic (direction and hold)
HEARTBEAT = const(7)   # host lost: discharge forbidden
METER = const(8)       # meter stale: discharge forbidden
CAN = const(9)         # BMS frames missing: discharge forbidden
FLOOR = const(10)      # SoC at the reserve floor
CHARGE_ONLY = const(11)  # charge-only mode asked by the host
FAULT = const(12)      # a fault forbids any transfer
PILOT = const(13)      # kept for the CAN source numbers; a limit below 6 A keeps its own source
COOLING = const(14)    # cooling loop failed: the uncooled rating (V2G-013)
N_SOURCES = const(15)

SOURCES = ('station', 'cable', 'bms', 'thermal', 'grid', 'csms', 'setpoint',
           'heartbeat', 'meter', 'can', 'floor', 'charge_only', 'fault', 'pilot', 'cooling')


class Limits:
    def __init__(self):
        self.charge = [NO_LIMIT] * N_SOURCES
        self.discharge = [NO_LIMIT] * N_SOURCES
        self.charge_ma = 0
        self.discharge_ma = 0
        self.charge_src = STATION
        self.discharge_src = STATION

    def resolve(self):
        """Take the minimum of each direction; negative values count as 0."""
        # min() and index() run in C: in the VM far fewer bytecodes than a loop over the
        # slots; index() finds the first slot with the minimum, so the tie rule holds
        lst = self.charge
        best = min(lst)
        self.charge_ma = best if best > 0 else 0
        self.charge_src = lst.index(best)
        lst = self.discharge
        best = min(lst)
        self.discharge_ma = best if best > 0 else 0
        self.discharge_src = lst.index(best)

    def charge_name(self):
        return SOURCES[self.charge_src]

    def discharge_name(self):
        return SOURCES[self.discharge_src]

    def no_offer(self):
        """A charge limit below what the pilot can offer becomes 0; its source stays."""
        self.charge_ma = 0

    def force_charge(self, src, ma):
        """Lower the resolved charge limit after resolve() (e.g. pilot minimum)."""
        if ma < self.charge_ma:
            self.charge_ma = ma
            self.charge_src = src
