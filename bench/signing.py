"""Signed updates: how long the controller takes to check a bundle's signature.

Measured in the MicroPython VM (Node + WebAssembly); the STM32F405 figure is the VM
time x 15, the ratio between the VM and that board on plain bytecode (pystone).
Big-integer code allocates, where the board is only about 5x slower than the VM per
the same measurements, so x 15 is the cautious side. The goal is the whole ES256
check (P-256 verify of the Sig_structure) under 0.5 s on the board.
"""

import json
import tempfile
from pathlib import Path

from host_tools import vm
from signing import bundle, keys

BOARD_FACTOR = 15
GOAL_S = 0.5
ROUNDS = 10

_VM_CODE = """
import time, json
from core import p256, manifest
with open('/bench/in.json') as f:
    d = json.load(f)
point = bytes.fromhex(d['point'])
data = bytes.fromhex(d['bundle'])
t0 = time.ticks_ms()
for _ in range({rounds}):
    key = p256.PublicKey(point)
t_key = time.ticks_diff(time.ticks_ms(), t0) / {rounds}
n = manifest.parse_header(data)
cose_bytes = data[8:8 + n]
t0 = time.ticks_ms()
for _ in range({rounds}):
    man = manifest.open_manifest(cose_bytes, key)
t_open = time.ticks_diff(time.ticks_ms(), t0) / {rounds}
from core import cose
import hashlib
protected, hdr, payload, sig = cose.parse_sign1(cose_bytes)
digest = hashlib.sha256(cose.sig_structure(protected, payload)).digest()
t0 = time.ticks_ms()
for _ in range({rounds}):
    ok = key.verify_digest(digest, sig)
t_ver = time.ticks_diff(time.ticks_ms(), t0) / {rounds}
t0 = time.ticks_ms()
man2 = manifest.verify_bundle(data, key, manifest.BOARD_CLASS['sim'], 0, 0)
t_all = time.ticks_diff(time.ticks_ms(), t0)
print('RESULT', json.dumps({{'key': t_key, 'open': t_open, 'verify': t_ver, 'ok': ok,
                            'all': t_all, 'size': len(data)}}))
"""


def measure():
    key = keys.generate(keys.ES256)
    comps = [("main.py", b"import app\n"), ("core/controller.mpy", bytes(range(256)) * 64)]
    data = bundle.sign(key, comps, 1, "bench", "sim")
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "in.json").write_text(json.dumps({"point": keys.device_public_key(key).hex(),
                                                    "bundle": data.hex()}))
        mounts = vm.firmware_mounts("sim", extra=[(Path(tmp), "/bench")])
        out = vm.run_micropython(_VM_CODE.format(rounds=ROUNDS), mounts=mounts, timeout=300)
    line = next(ln for ln in out.splitlines() if ln.startswith("RESULT "))
    res = json.loads(line[len("RESULT "):])
    if not res["ok"]:
        raise RuntimeError("the VM did not verify a good signature")
    return res


def rows():
    r = measure()
    board_s = r["verify"] * BOARD_FACTOR / 1000.0
    open_s = r["open"] * BOARD_FACTOR / 1000.0
    return [
        ("ES256 verify (P-256), MicroPython VM", round(r["verify"], 1), "ms", None, None),
        ("ES256 verify, STM32F405 estimate (VM x 15)", round(board_s, 3), "s",
         "< {} s".format(GOAL_S), board_s < GOAL_S),
        ("COSE_Sign1 + manifest check, STM32F405 estimate (VM x 15)", round(open_s, 3), "s",
         "< {} s".format(GOAL_S), open_s < GOAL_S),
        ("public key load (per boot: table of 8 multiples), VM", round(r["key"], 1), "ms", None, None),
        ("whole {} kB bundle incl. digests, VM".format(r["size"] // 1024), r["all"], "ms", None, None),
    ]


if __name__ == "__main__":
    for row in rows():
        print(row)
