"""python-can's slcan interface on the endpoint's pty joins the in-process bus, as through
a real USB-CAN adapter; firmware-encoded frames cross it and cantools decodes them."""

import queue
import time

import can
import cantools
import pytest

from host_tools import gen_can, vm
from host_tools.slcan import BELL, OK, CanBus, CanFrame, SlcanEndpoint, format_frame, parse_frame

vm.firmware_sys_path("sim")

from core import can_msgs as cm  # noqa: E402

DB = cantools.database.load_file(str(gen_can.DBC_PATH))


@pytest.fixture
def rig():
    bus = CanBus(bitrate=500000)
    seen = queue.Queue()
    me = bus.attach(seen.put)
    ep = SlcanEndpoint(bus).start()
    client = can.Bus(interface="slcan", channel=ep.port_name, bitrate=500000, sleep_after_open=0)
    assert ep.wait_open()
    yield bus, me, seen, ep, client
    client.shutdown()
    ep.close()


def _recv(client, timeout=2.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        m = client.recv(timeout=0.1)
        if m is not None:
            return m
    return None


def test_python_can_sends_onto_the_bus(rig):
    bus, me, seen, ep, client = rig
    assert ep.is_open and ep.bitrate == 500000
    client.send(can.Message(arbitration_id=0x601, data=bytes(range(8)), is_extended_id=False))
    client.send(can.Message(arbitration_id=0x18DAF110, data=b"\x02\x10\x03", is_extended_id=True))
    client.send(can.Message(arbitration_id=0x7DF, is_remote_frame=True, dlc=3, is_extended_id=False))
    got = [seen.get(timeout=2) for _ in range(3)]
    assert got[0] == CanFrame(0x601, bytes(range(8)))
    assert got[1] == CanFrame(0x18DAF110, b"\x02\x10\x03", extended=True)
    assert got[2].remote and got[2].length == 3 and got[2].can_id == 0x7DF


def test_bus_frames_reach_python_can(rig):
    bus, me, seen, ep, client = rig
    bus.send(CanFrame(0x610, b"\x01\x02"), me)
    bus.send(CanFrame(0x1ABCDE, b"", extended=True), me)
    m1, m2 = _recv(client), _recv(client)
    assert m1.arbitration_id == 0x610 and bytes(m1.data) == b"\x01\x02" and not m1.is_extended_id
    assert m2.arbitration_id == 0x1ABCDE and m2.is_extended_id and m2.dlc == 0
    assert seen.empty()  # a sender never hears its own frame


def test_firmware_frames_both_ways(rig):
    bus, me, seen, ep, client = rig
    # controller -> vehicle: firmware-encoded power request, decoded by cantools at the client
    tx = cm.CanTx()
    tx.vcu_power_request.req_current_ma = -16000
    tx.vcu_power_request.req_mode = cm.REQ_MODE_DISCHARGE
    d = bytearray(8)
    n = tx.frame_vcu_power_request(d)
    bus.send(CanFrame(cm.VCU_POWER_REQUEST_ID, bytes(d[:n])), me)
    m = _recv(client)
    dec = DB.decode_message(m.arbitration_id, m.data, decode_choices=False)
    assert dec["ReqCurrent"] == pytest.approx(-16.0) and dec["ReqMode"] == 2 and dec["Counter"] == 0
    # vehicle -> controller: cantools-encoded BMS status sent by python-can, fed to the firmware receiver
    msg = DB.get_message_by_name("BMS_Status")
    raw = bytearray(msg.encode({"SoC": 64.2, "Counter": 5, "PackVoltage": 398.1, "PackCurrent": -20.5,
                                "TempMax": 33, "Checksum": 0}))
    raw[7] = cm.checksum(raw, msg.frame_id)
    client.send(can.Message(arbitration_id=msg.frame_id, data=raw, is_extended_id=False))
    f = seen.get(timeout=2)
    rx = cm.CanRx()
    assert rx.feed(f.can_id, f.data, len(f.data), 1000) == cm.BMS_STATUS_ID
    st = rx.bms_status
    assert (st.soc_pm, st.pack_voltage_mv, st.pack_current_ma, st.temp_max_dc) == (642, 398100, -20500, 330)


def test_bitrate_mismatch_isolates_client():
    bus = CanBus(bitrate=500000)
    seen = queue.Queue()
    me = bus.attach(seen.put)
    with SlcanEndpoint(bus) as ep:
        client = can.Bus(interface="slcan", channel=ep.port_name, bitrate=250000, sleep_after_open=0)
        try:
            assert ep.wait_open() and ep.bitrate == 250000
            client.send(can.Message(arbitration_id=0x123, data=b"\x01", is_extended_id=False))
            bus.send(CanFrame(0x321, b"\x02"), me)
            assert _recv(client, 0.5) is None
            assert seen.empty() and ep.stats["dropped"] >= 1
            assert ep.handle_command(b"F") == b"F80\r"
        finally:
            client.shutdown()


def test_protocol_commands_directly():
    bus = CanBus()
    ep = SlcanEndpoint(bus)
    try:
        assert ep.handle_command(b"t1230") == BELL  # closed
        assert ep.handle_command(b"S9") == BELL
        assert ep.handle_command(b"S6") == OK and ep.bitrate == 500000
        assert ep.handle_command(b"Z1") == OK
        assert ep.handle_command(b"V") == b"V1013\r" and ep.handle_command(b"N").startswith(b"N")
        assert ep.handle_command(b"O") == OK and ep.handle_command(b"O") == BELL
        assert ep.handle_command(b"S4") == BELL  # not while open
        for bad in (b"t12", b"t8001", b"t1239" + b"00" * 9, b"t1232ZZ00", b"t12320", b"T200000001",
                    b"r1232AA", b"Q"):
            assert ep.handle_command(bad) == BELL, bad
        assert ep.handle_command(b"t1232ABCD") == b"z\r"
        assert ep.handle_command(b"R1FFFFFFF4") == b"Z\r"
        assert ep.handle_command(b"C") == OK
        assert ep.handle_command(b"L") == OK and ep.handle_command(b"t1230") == BELL  # listen only
    finally:
        ep.close()


def test_frame_text_round_trip_and_timestamps():
    f = CanFrame(0x601, b"\x00\xff\x10")
    assert format_frame(f) == b"t6013" + b"00FF10" + b"\r"
    assert format_frame(f, 61234) == b"t601300FF10" + b"04D2\r"  # 61234 ms -> 1234 in the minute
    assert parse_frame(b"t601300FF10") == f
    with pytest.raises(ValueError, match="length"):
        parse_frame(b"t6019")
