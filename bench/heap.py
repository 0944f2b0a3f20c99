"""Firmware heap after start-up, measured in the MicroPython VM.

Two figures, because where bytecode lives depends on the build: modules imported from the
filesystem (.py or .mpy) keep their bytecode in RAM; modules frozen into the firmware image
(firmware/manifest.py) keep it in flash, and the heap holds only the station's objects.
"""

from host_tools import vm

CODE = r'''
import gc, asyncio, os
try:
    os.mkdir('/tmp/heap')
except OSError:
    pass
os.chdir('/tmp/heap')
await asyncio.sleep(0)   # the VM frees garbage only once Python yields to the host loop
gc.collect()
empty = gc.mem_alloc()
from board import hal as H
from app import station as S
await asyncio.sleep(0)
gc.collect()
loaded = gc.mem_alloc()
hal = H.Hal(ports=H.MemoryPorts(), clock=lambda: 0)
st = S.Station(hal, 0)
for i in range(200):
    st.tick(i * 50)
await asyncio.sleep(0)
gc.collect()
running = gc.mem_alloc()
print(loaded - empty, running - loaded)
'''


def rows():
    code_bytes, objects = (int(x) for x in vm.run_micropython(CODE).split())
    return [
        ("station objects after start-up (frozen-module build)", objects, "bytes", "< 40 kB",
         objects < 40_000),
        ("plus module bytecode, when imported from the filesystem", code_bytes + objects, "bytes",
         "(frozen build avoids)", None),
    ]


if __name__ == "__main__":
    for r in rows():
        print(r)
