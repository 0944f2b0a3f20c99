"""Host link: cost of framing and CBOR on the controller and on the host.

Controller figures are measured in the MicroPython VM and scaled by 15 to
estimate an STM32F405 at 168 MHz (see the VM notes: plain bytecode runs 10-20x
faster in the VM). The shell handles the link between control steps, so each
link action delays the next step by its own cost: the goal for any one action
is 10 % of the 50 ms step.
"""

import time

from host_tools import vm
from host_tools import link as hlink

vm.firmware_sys_path("sim")

VM_SCALE = 15

# One sample a second is the shell's default (TEL_BATCH); the host may ask for batches of up to
# TEL_BATCH_MAX (3; a frame holds 1 kB), which is measured too.
# the fields app/station.py puts in a sample, with values of a discharging station
TEL_SAMPLE = {"t_ms": 123456789, "cp": "C", "mode": "discharging", "contactor": True, "pwm_pm": 50,
              "ma": -16000, "mv": 230000, "mhz": 50012, "w": -3680, "soc_pm": 734,
              "evse_dc": 412, "bat_dc": 287, "lim_chg_ma": 32000, "lim_chg_src": "station",
              "lim_dis_ma": 16000, "lim_dis_src": "setpoint", "req_ma": -16000, "errors": [],
              "e_in_wh": 1234567, "e_out_wh": 765432, "dis_cap_wh": 28350}

VM_CODE = """
import time, gc
from core import link
sample = %r
tel = link.tel([dict(sample) for _ in range(3)])
wire = []
tx = link.Link(lambda b: wire.append(bytes(b)))
tx.send(link.rtt(0))
tx.send(tel)
tel_frame = wire[-1]
tel5 = link.tel([dict(sample) for _ in range(2)])
tel1 = link.tel([dict(sample)])
hb_frame = link.encode_frame(link.hb(12345, 987654321))
cmd_frame = link.encode_frame(link.cmd('h5f2a9c01d3e4', 'soc_target', {'soc_pct': 80, 'mode': 'v2g'}))
rx = link.Link(lambda b: None)
N = 200
t0 = time.ticks_us()
for _ in range(N):
    rx.feed(tel_frame)
t_tel_rx = time.ticks_diff(time.ticks_us(), t0) / N
t0 = time.ticks_us()
for _ in range(N):
    tx.send(tel)
t_tel_tx = time.ticks_diff(time.ticks_us(), t0) / N
t0 = time.ticks_us()
for _ in range(N):
    tx.send(tel5)
t_tel5_tx = time.ticks_diff(time.ticks_us(), t0) / N
t0 = time.ticks_us()
for _ in range(N):
    tx.send(tel1)
t_tel1_tx = time.ticks_diff(time.ticks_us(), t0) / N
t0 = time.ticks_us()
for _ in range(N):
    rx.feed(cmd_frame)
t_cmd_rx = time.ticks_diff(time.ticks_us(), t0) / N
t0 = time.ticks_us()
for _ in range(N):
    for m in rx.feed(hb_frame):
        rx.send(link.hback(m))
t_hb = time.ticks_diff(time.ticks_us(), t0) / N
gc.collect()
a0 = gc.mem_alloc()
for m in rx.feed(hb_frame):
    rx.send(link.hback(m))
alloc = gc.mem_alloc() - a0
print(len(tel_frame), t_tel_rx, t_tel_tx, t_hb, alloc, t_tel5_tx, t_cmd_rx, t_tel1_tx)
""" % (TEL_SAMPLE,)


def vm_figures():
    out = vm.run_micropython(VM_CODE, timeout=120)
    size, rx, tx, hb, alloc, tx5, cmd_rx, tx1 = out.strip().splitlines()[-1].split()
    return (int(size), float(rx), float(tx), float(hb), int(alloc), float(tx5), float(cmd_rx),
            float(tx1))


def host_figures(n=2000):
    tel = {"v": 1, "t": "tel", "samples": [dict(TEL_SAMPLE) for _ in range(3)]}
    d = hlink.Deframer()
    t0 = time.perf_counter()
    for _ in range(n):
        frame = hlink.encode_frame(tel)
    t_enc = (time.perf_counter() - t0) / n * 1e6
    t0 = time.perf_counter()
    for _ in range(n):
        d.feed(frame)
    t_dec = (time.perf_counter() - t0) / n * 1e6
    return len(frame), t_enc, t_dec


def rows():
    out = []
    size, t_enc, t_dec = host_figures()
    out.append(("host: encode 3-sample tel frame ({} B)".format(size), round(t_enc, 1), "us",
                "< 1000 us", t_enc < 1000))
    out.append(("host: deframe + decode the same frame", round(t_dec, 1), "us", "< 1000 us", t_dec < 1000))
    try:
        size, rx, tx, hb, alloc, tx5, cmd_rx, tx1 = vm_figures()
    except (vm.VmMissing, vm.VmError) as e:
        out.append(("controller link in the MicroPython VM", "skipped: {}".format(e), "", "", None))
        return out
    goal = "< 5000 us (10 % of a step)"
    for name, us in (("send 1-sample tel (the default batch)", tx1),
                     ("send 3-sample tel, the largest batch ({} B)".format(size), tx),
                     ("send 2-sample tel", tx5),
                     ("receive cmd frame", cmd_rx),
                     ("hb in -> hback out", hb)):
        out.append(("VM: " + name, round(us, 1), "us", "", None))
        out.append(("STM32F405 est. (VM x {}): {}".format(VM_SCALE, name), round(us * VM_SCALE), "us",
                    goal, us * VM_SCALE < 5000))
    out.append(("heap allocated per heartbeat round (VM)", alloc, "bytes", "", None))
    return out

if __name__ == "__main__":
    for row in rows():
        print(row)
