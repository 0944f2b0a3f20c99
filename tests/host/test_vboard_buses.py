"""The virtual board's field buses with real tools: the pymodbus meter simulator on the rs485
pseudo-terminal and python-can's slcan interface on the can endpoint."""

import json
import os
import threading
import time

import can
import pytest
import serial

from host_tools.link import LinkClient
from host_tools.metersim import MeterSim
from host_tools.vboard import provision
from vboard_fixture import RunningBoard

CFG = {"GRID_ENTER_SERVICE_DELAY_S": 0, "GRID_RAMP_S": 0, "METER_STALE_S": 1, "CAN_TIMEOUT_MS": 500}


def start(tmp_path, *args, cfg=None):
    state = tmp_path / "flash"
    provision(state)
    (state / "v2g_vars.json").write_text(json.dumps(dict(CFG, **(cfg or {}))))
    return RunningBoard(state, *args)


class Host:
    """The host link with telemetry and events collected."""

    def __init__(self, board):
        self.tel, self.evs = [], []
        self.lk = LinkClient(board.endpoints["link"], on_tel=lambda m: self.tel.extend(m["samples"]),
                             on_evt=lambda m: self.evs.extend(m["events"])).open()
        assert self.lk.command("telemetry", {"period_ms": 200}).ok
        self.plant_port = open(board.endpoints["plant"], "wb", buffering=0)

    def plant(self, **ev):
        self.plant_port.write((json.dumps(ev) + "\n").encode())

    def wait(self, what, timeout=30.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            got = what()
            if got:
                return got
            time.sleep(0.05)
        raise AssertionError("not within {} s; last telemetry {}; events {}".format(
            timeout, self.tel[-1:] if self.tel else None, self.evs[-4:]))

    def last(self):
        return self.tel[-1] if self.tel else {}

    def diag(self):
        return self.lk.command("diag").data

    def close(self):
        self.plant_port.close()
        self.lk.close()


@pytest.fixture
def meter_board(tmp_path):
    b = start(tmp_path, "--meter", "sdm630")
    h = Host(b)
    yield b, h
    h.close()
    b.stop()


def test_meter_readings_reach_telemetry_and_follow_the_plant(meter_board):
    board, h = meter_board
    h.wait(lambda: h.last().get("mv") == 240000 and h.last().get("mhz") == 60000)
    h.plant(do="plug")
    h.plant(do="ev_ready")
    # the charging current goes plant -> meter simulator -> Modbus RTU -> firmware -> telemetry
    h.wait(lambda: h.last().get("mode") == "charging" and h.last().get("ma", 0) > 6000, timeout=10)
    h.plant(do="grid", voltage_v=236.5)
    h.wait(lambda: h.last().get("mv") == 236500)
    m = h.diag()["buses"]["meter"]
    assert m["snap_ok"] >= 3 and "timeouts" not in m and "failure" not in m
    assert "meter" not in [e["code"] for e in h.evs if e["code"] == "V2G-120" and e["t_ms"] > 1000]


# the meter's answers must come within the firmware's Modbus reply timeout: on a CPU shared
# with other tests a corrupted answer arrives late and counts as a timeout instead
@pytest.mark.serial
@pytest.mark.parametrize("kind,words,counter", [("timeout", "timeout", "timeouts"),
                                                ("crc", "CRC", "crc_errors"),
                                                ("exception", "exception code 04", "exceptions")])
def test_each_meter_fault_is_named_forbids_discharge_and_recovers(meter_board, kind, words, counter):
    board, h = meter_board
    h.wait(lambda: h.last().get("mv") == 240000)
    h.plant(do="plug")
    h.plant(do="ev_ready")
    assert h.lk.command("soc_target", {"soc_pct": 30}).ok
    h.wait(lambda: h.last().get("mode") == "discharging", timeout=10)
    h.plant(do="meter_fault", kind=kind)
    ev = h.wait(lambda: [e for e in h.evs if e["code"] == "V2G-120" and e["on"] and words in e["msg"]])
    assert "METER_STALE_S" in ev[0]["msg"]
    h.wait(lambda: h.last().get("lim_dis_ma") == 0 and "V2G-120" in h.last().get("errors", ()))
    h.wait(lambda: h.last().get("req_ma", -1) >= 0)
    d = h.diag()["buses"]["meter"]
    assert d.get(counter), d
    assert words in d["failure"]
    h.plant(do="meter_restore")
    h.wait(lambda: [e for e in h.evs if e["code"] == "V2G-120" and not e["on"] and e["t_ms"] > ev[0]["t_ms"]])
    h.wait(lambda: h.last().get("mode") == "discharging", timeout=10)


def test_garbage_on_rs485_and_can_is_counted_and_harmless(meter_board):
    board, h = meter_board
    h.wait(lambda: h.last().get("mv") == 240000)
    seq_before = h.diag()["buses"]["meter"]["snap_ok"]
    with serial.Serial(board.endpoints["rs485"], 9600, timeout=0.1) as line:
        for _ in range(20):
            line.write(os.urandom(40))
            time.sleep(0.05)
    with serial.Serial(board.endpoints["can"], 115200, timeout=0.1) as port:
        port.write(b"garbage\r" + os.urandom(100) + b"\rt12\r")
        port.read(200)
    with can.Bus(interface="slcan", channel=board.endpoints["can"], bitrate=500000, sleep_after_open=0) as bus:
        bus.send(can.Message(arbitration_id=0x601, data=b"\x01\x02\x03", is_extended_id=False))   # wrong DLC
        bus.send(can.Message(arbitration_id=0x7AB, data=bytes(8), is_extended_id=False))           # unknown id
        bus.send(can.Message(arbitration_id=0x601, data=bytes(8), is_extended_id=True))             # 29-bit
        bus.send(can.Message(arbitration_id=0x602, data=bytes(8), is_extended_id=False))           # bad checksum
        time.sleep(0.5)
    d = h.diag()
    m = d["buses"]["meter"]
    assert m.get("stray_bytes", 0) + m.get("crc_errors", 0) + m.get("bad_length", 0) + m.get("wrong_unit", 0) > 0
    c = d["buses"]["can"]
    assert c.get("bad_dlc") == 1 and c.get("unknown_id") == 2 and c.get("bad_checksum") == 1
    # still alive, and the meter still gives good snapshots
    h.wait(lambda: h.diag()["buses"]["meter"]["snap_ok"] > seq_before + 2)
    assert h.last().get("mv") == 240000


def test_python_can_sees_the_controller_and_the_simulated_bms(tmp_path):
    board = start(tmp_path)
    h = Host(board)
    try:
        h.plant(do="plug")
        seen = {}
        with can.Bus(interface="slcan", channel=board.endpoints["can"], bitrate=500000, sleep_after_open=0) as bus:
            end = time.monotonic() + 2.0
            while time.monotonic() < end:
                m = bus.recv(0.1)
                if m is not None:
                    seen.setdefault(m.arbitration_id, []).append(m)
        for cid in (0x600, 0x610, 0x611, 0x601, 0x602):
            assert 12 <= len(seen.get(cid, [])) <= 24, (hex(cid), len(seen.get(cid, [])))   # 100 ms period
        assert 1 <= len(seen.get(0x603, [])) <= 3
        import cantools
        from host_tools.bench import DBC
        db = cantools.database.load_file(str(DBC))
        st = db.decode_message(0x610, seen[0x610][-1].data, decode_choices=True)
        assert str(st["CpState"]) == "B"
        bms = db.decode_message(0x601, seen[0x601][-1].data)
        assert bms["SoC"] == pytest.approx(50.0, abs=0.2)
        assert h.diag()["buses"]["can"]["rx_ok"] > 10
    finally:
        h.close()
        board.stop()


def test_bms_frames_from_python_can_drive_the_controller(tmp_path):
    board = start(tmp_path, "--ev-can", "external")
    h = Host(board)
    stop = threading.Event()
    try:
        import cantools
        from host_tools.bench import DBC, checksum
        db = cantools.database.load_file(str(DBC))
        bus = can.Bus(interface="slcan", channel=board.endpoints["can"], bitrate=500000, sleep_after_open=0)

        def vehicle():
            n = 0
            while not stop.is_set():
                for name, sig in (("BMS_Status", {"SoC": 77.7, "PackVoltage": 400, "PackCurrent": 0, "TempMax": 31}),
                                  ("BMS_Limits", {"MaxChargeCurrent": 12.5, "MaxDischargeCurrent": 7,
                                                  "FaultBits": 0, "TempMin": 30})):
                    msg = db.get_message_by_name(name)
                    d = bytearray(msg.encode(dict(sig, Counter=n & 15, Checksum=0)))
                    d[7] = checksum(d, msg.frame_id)
                    bus.send(can.Message(arbitration_id=msg.frame_id, data=bytes(d), is_extended_id=False))
                n += 1
                time.sleep(0.1)

        t = threading.Thread(target=vehicle, daemon=True)
        t.start()
        h.plant(do="plug")
        h.wait(lambda: h.last().get("soc_pm") == 777 and h.last().get("bat_dc") == 310)
        h.wait(lambda: h.last().get("lim_chg_ma") == 12500 and h.last().get("lim_chg_src") == "bms")
        assert not [e for e in h.evs if e["code"] == "V2G-130" and e["on"] and e["t_ms"] > 3000]
        stop.set()
        t.join(1)
        h.wait(lambda: "V2G-130" in h.last().get("errors", ()))
        bus.shutdown()
    finally:
        stop.set()
        h.close()
        board.stop()


def test_external_meter_on_the_rs485_port(tmp_path):
    board = start(tmp_path, "--meter", "external", cfg={"METER_MODEL": "SDM120"})
    h = Host(board)
    try:
        with MeterSim(board.endpoints["rs485"], model="SDM120") as sim:
            sim.update(v1=229.5, i1=3.0, p1=-688.5, hz=50.02)
            h.wait(lambda: h.last().get("mv") == 229500 and h.last().get("mhz") == 50020)
            assert h.last()["ma"] == -3000     # exporting: negative power, negative current
        h.wait(lambda: "V2G-120" in h.last().get("errors", ()))
        assert "timeout" in h.diag()["buses"]["meter"]["failure"]
    finally:
        h.close()
        board.stop()
