"""Control core: cost of one control step in the MicroPython VM, its heap use, and the
controller's own reaction times in simulated milliseconds (50 ms steps).

The step cost is measured in the VM (MicroPython 1.27 on WebAssembly); the board
estimate divides it by 15 (shared notes: the VM runs plain bytecode about 10-20x
faster than an STM32F405). The goal is a step within 10 % of the 50 ms period on
the board.
"""

from host_tools import vm

vm.firmware_sys_path("sim")

from core.controller import CONTROL_PERIOD_MS, Controller, Inputs  # noqa: E402

VM_SPEEDUP = 15
BOARD_GOAL_US = 5000

# Runs unchanged in the VM and under CPython: a charging then discharging session,
# then n timed steps that move SoC and temperature (the usual work of a step).
STEP_LOOP = """
import gc, time
from core.controller import Controller, Inputs

def step_loop(n):
    c = Controller()
    i = Inputs()
    i.cp_high_mv = 9000; i.pp_limit_a = 32; i.meter_ok = True; i.meter_age_ms = 100
    i.bms_age_ms = 50; i.bms_soc_pm = 800; i.bms_max_charge_ma = 32000
    i.bms_max_discharge_ma = 32000; i.bms_capacity_wh = 60000; i.evse_temp_dc = 300
    t = 0
    for k in range(200):
        t += 50
        if k == 5:
            i.cp_high_mv = 6000
        if k == 100:
            c.command(t, 'b1', 'soc_target', {'soc_pct': 40})
        c.heartbeat(t)
        o = c.step(t, i)
        i.contactor_closed = o.contactor
        i.meter_ma = o.request_ma
        if getattr(o, 'cooling', False):
            i.cooling_count += 1    # the pump runs: its feedback counts
    c.pop_events()
    gc.collect()
    before = gc.mem_alloc()
    t0 = time.ticks_us()
    for k in range(n):
        t += 50
        c.heartbeat(t)
        i.bms_soc_pm = 700 - (k % 50)
        i.evse_temp_dc = 600 + (k % 100)
        o = c.step(t, i)
        i.contactor_closed = o.contactor
        i.meter_ma = o.request_ma
        if o.cooling:
            i.cooling_count += 1
    us = time.ticks_diff(time.ticks_us(), t0)
    grew = gc.mem_alloc() - before
    return us, grew, o.request_ma

us, grew, req = step_loop(N)
print('RESULT', us, grew, req)
"""


def vm_step_cost(n=2000):
    """(us per step, bytes allocated over n steps) in the MicroPython VM."""
    out = vm.run_micropython(STEP_LOOP.replace("N)", "{})".format(n)), timeout=300)
    for line in out.splitlines():
        if line.startswith("RESULT"):
            _, us, grew, req = line.split()
            assert int(req) < 0, "the timed steps were not discharging"
            return int(us) / n, int(grew)
    raise RuntimeError("no result from the VM: " + out)


class _Rig:
    def __init__(self, changes=None):
        from core import config
        self.c = Controller(config.validate(changes or {}))
        i = Inputs()
        i.pp_limit_a = 32
        i.meter_ok = True
        i.meter_age_ms = 100
        i.bms_age_ms = 50
        i.bms_soc_pm = 800
        i.bms_max_charge_ma = 32000
        i.bms_max_discharge_ma = 32000
        i.bms_capacity_wh = 60000
        i.evse_temp_dc = 300
        self.i = i
        self.t = 0
        self.hb = True

    def step(self):
        self.t += CONTROL_PERIOD_MS
        if self.hb:
            self.c.heartbeat(self.t)
        o = self.c.step(self.t, self.i)
        self.i.contactor_closed = o.contactor
        self.i.meter_ma = o.request_ma if o.contactor else 0
        if o.cooling:
            self.i.cooling_count += 1   # the pump runs: its feedback counts
        return o

    def ms_until(self, pred, limit=2000):
        start = self.t
        for _ in range(limit):
            if pred(self.step()):
                return self.t - start
        return None


def reaction_times():
    r = _Rig({'HEARTBEAT_TIMEOUT_S': 2})
    r.i.cp_high_mv = 9000
    r.ms_until(lambda o: o.cp_state == 'B')
    r.i.cp_high_mv = 6000
    close_ms = r.ms_until(lambda o: o.contactor)
    r.ms_until(lambda o: o.request_ma == 32000)
    r.i.cp_high_mv = 9000
    open_ms = r.ms_until(lambda o: not o.contactor)
    r.i.cp_high_mv = 6000
    r.ms_until(lambda o: o.contactor)
    r.c.command(r.t, 'x', 'soc_target', {'soc_pct': 40})
    r.ms_until(lambda o: o.request_ma <= -32000)
    r.hb = False
    last_hb = r.t
    r.ms_until(lambda o: o.request_ma >= 0)
    hb_after_timeout = (r.t - last_hb) - 2000   # the timeout is 'more than 2 s': one step
    r.i.cp_high_mv = 0
    fault_ms = r.ms_until(lambda o: not o.contactor and o.pwm_pm == 0)
    return close_ms, open_ms, hb_after_timeout, fault_ms


def rows():
    out = []
    close_ms, open_ms, hb_late, fault_ms = reaction_times()
    out.append(("B->C: contactor closed after", close_ms, "ms (sim)", "<= 3000", close_ms <= 3000))
    out.append(("C->B: contactor open after", open_ms, "ms (sim)", "<= 100", open_ms <= 100))
    out.append(("state E: contactor open, PWM state F after", fault_ms, "ms (sim)", "<= 50",
                fault_ms <= 50))
    out.append(("heartbeat timeout -> no discharge, within", hb_late, "ms (sim)", "<= 50 (one step)", hb_late <= 50))
    try:
        us, grew = vm_step_cost()
    except (vm.VmMissing, vm.VmError) as e:
        out.append(("control step in the VM", "unavailable: {}".format(e), "", "", None))
        return out
    out.append(("control step in the VM", us, "us", "", None))
    board = us * VM_SPEEDUP
    out.append(("control step, board estimate (VM x {})".format(VM_SPEEDUP), board, "us",
                "< {} (10 % of 50 ms)".format(BOARD_GOAL_US), board < BOARD_GOAL_US))
    out.append(("heap growth over 2000 steps in the VM", grew, "bytes", "0", grew == 0))
    return out


if __name__ == "__main__":
    for row in rows():
        print(row)
