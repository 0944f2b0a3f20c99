"""Generated CAN codec: known frames, round trips, receiver checks."""

from core import can_msgs as cm


def _frame(can_id, body7):
    d = bytearray(body7) + b"\x00"
    d[7] = cm.checksum(d, can_id)
    return d


def test_checksum_definition():
    d = bytearray([1, 2, 3, 4, 5, 6, 7, 0])
    # 0xFF ^ ((28 + 0x01 + 0x06) & 0xFF) for id 0x601
    assert cm.checksum(d, 0x601) == 0xFF ^ 35
    assert cm.checksum(d, 0x602) != cm.checksum(d, 0x601)


def test_bms_status_known_bytes():
    # SoC 81.5 % (815), counter 3, 402.7 V (4027), -12.3 A (-123), 31 degC (71)
    body = [815 & 0xFF, (815 >> 8) | (3 << 4), 4027 & 0xFF, 4027 >> 8, (-123) & 0xFF, ((-123) >> 8) & 0xFF, 71]
    d = _frame(cm.BMS_STATUS_ID, body)
    o = cm.BmsStatus()
    assert cm.unpack_bms_status(d, o)
    assert o.soc_pm == 815 and o.counter == 3
    assert o.pack_voltage_mv == 402700 and o.pack_current_ma == -12300 and o.temp_max_dc == 310
    d2 = bytearray(8)
    assert cm.pack_bms_status(o, d2) == 0
    assert d2 == d


def test_round_trip_every_message():
    cases = (
        (cm.VcuPowerRequest, cm.pack_vcu_power_request, cm.unpack_vcu_power_request,
         {"req_current_ma": -32000, "req_mode": cm.REQ_MODE_DISCHARGE, "contactor_closed": 1, "counter": 9}),
        (cm.BmsStatus, cm.pack_bms_status, cm.unpack_bms_status,
         {"soc_pm": 1000, "counter": 15, "pack_voltage_mv": 800000, "pack_current_ma": 3276700,
          "temp_max_dc": -400}),
        (cm.BmsLimits, cm.pack_bms_limits, cm.unpack_bms_limits,
         {"max_charge_current_ma": 125000, "max_discharge_current_ma": 0, "fault_bits": 0x81,
          "temp_min_dc": 2150, "counter": 0}),
        (cm.BmsInfo, cm.pack_bms_info, cm.unpack_bms_info,
         {"capacity_wh": 77000, "cell_volt_min_mv": 3301, "cell_volt_max_mv": 4199, "soh_pm": 965}),
        (cm.EvseStatus, cm.pack_evse_status, cm.unpack_evse_status,
         {"cp_state": cm.CP_STATE_C, "mode": cm.MODE_CHARGE_ONLY, "contactor": 1, "counter": 7,
          "pwm_duty_pm": 533, "errors": 0xABCDEF}),
        (cm.EvseLimits, cm.pack_evse_limits, cm.unpack_evse_limits,
         {"limit_charge_ma": 32000, "limit_discharge_ma": 16000, "limit_charge_src": cm.LIMIT_CHARGE_SRC_BMS,
          "limit_discharge_src": cm.LIMIT_DISCHARGE_SRC_CSMS, "meter_current_ma": -15900, "counter": 14}),
    )
    for cls, pack, unpack, vals in cases:
        o = cls()
        for k in vals:
            setattr(o, k, vals[k])
        d = bytearray(8)
        assert pack(o, d) == 0, cls
        back = cls()
        assert unpack(d, back)
        for k in vals:
            assert getattr(back, k) == vals[k], (cls, k, getattr(back, k))


def test_pack_rounds_and_saturates():
    o = cm.VcuPowerRequest()
    d = bytearray(8)
    o.req_current_ma = 1049  # 0.1 A resolution
    assert cm.pack_vcu_power_request(o, d) == 0
    back = cm.VcuPowerRequest()
    cm.unpack_vcu_power_request(d, back)
    assert back.req_current_ma == 1000
    o.req_current_ma = 1050
    cm.pack_vcu_power_request(o, d)
    cm.unpack_vcu_power_request(d, back)
    assert back.req_current_ma == 1100
    o.req_current_ma = -5000000  # beyond -3276.8 A: saturates, never wraps to a charge request
    o.req_mode = 99
    assert cm.pack_vcu_power_request(o, d) == 2
    cm.unpack_vcu_power_request(d, back)
    assert back.req_current_ma == -3276800 and back.req_mode == 15
    s = cm.BmsStatus()
    s.soc_pm = 1500
    assert cm.pack_bms_status(s, d) == 1
    b2 = cm.BmsStatus()
    cm.unpack_bms_status(d, b2)
    assert b2.soc_pm == 1000


def _bms_status_bytes(soc_pm, counter):
    o = cm.BmsStatus()
    o.soc_pm = soc_pm
    o.counter = counter
    o.pack_voltage_mv = 400000
    o.temp_max_dc = 250
    d = bytearray(8)
    cm.pack_bms_status(o, d)
    return d


def test_receiver_accepts_and_counts():
    rx = cm.CanRx()
    st = rx.stats
    assert rx.age_ms(0, 100) >= 0x3FFFFFFF
    assert rx.feed(cm.BMS_STATUS_ID, _bms_status_bytes(500, 0), 8, 1000) == cm.BMS_STATUS_ID
    assert rx.bms_status.soc_pm == 500 and rx.age_ms(0, 1100) == 100
    assert rx.feed(cm.BMS_STATUS_ID, _bms_status_bytes(510, 1), 8, 1100)
    assert rx.feed(cm.BMS_STATUS_ID, _bms_status_bytes(520, 3), 8, 1200)  # one lost: accepted
    assert st.counter_skip == 1 and st.rx_ok == 3 and rx.bms_status.soc_pm == 520


def test_receiver_rejects_bad_frames_unchanged():
    rx = cm.CanRx()
    st = rx.stats
    rx.feed(cm.BMS_STATUS_ID, _bms_status_bytes(500, 4), 8, 1000)
    good = _bms_status_bytes(600, 5)
    # wrong DLC
    assert rx.feed(cm.BMS_STATUS_ID, good, 7, 1100) == 0 and st.bad_dlc == 1
    # corrupted byte -> checksum
    bad = bytearray(good)
    bad[2] ^= 0x10
    assert rx.feed(cm.BMS_STATUS_ID, bad, 8, 1100) == 0 and st.bad_checksum == 1
    # frozen counter: the same frame again
    assert rx.feed(cm.BMS_STATUS_ID, _bms_status_bytes(600, 4), 8, 1100) == 0 and st.counter_repeat == 1
    # SoC above 100 % with a valid checksum
    d = bytearray(good)
    d[0] = 0xFF
    d[1] = (d[1] & 0xF0) | 0x03
    d[7] = cm.checksum(d, cm.BMS_STATUS_ID)
    assert rx.feed(cm.BMS_STATUS_ID, d, 8, 1100) == 0 and st.bad_range == 1
    # unknown ids, including our own transmit ids
    assert rx.feed(0x6FF, good, 8, 1100) == 0
    assert rx.feed(cm.EVSE_STATUS_ID, good, 8, 1100) == 0
    assert st.unknown_id == 2
    assert rx.bms_status.soc_pm == 500 and rx.last_ms[0] == 1000 and st.rx_ok == 1
    assert rx.feed(cm.BMS_STATUS_ID, good, 8, 1200) == cm.BMS_STATUS_ID


def test_transmitter_counter_and_checksum():
    tx = cm.CanTx()
    d = bytearray(8)
    o = tx.vcu_power_request
    o.req_current_ma = 16000
    o.req_mode = cm.REQ_MODE_CHARGE
    seen = []
    for _ in range(17):
        assert tx.frame_vcu_power_request(d) == 8
        assert d[7] == cm.checksum(d, cm.VCU_POWER_REQUEST_ID)
        seen.append(d[6] & 0x0F)
    assert seen[:16] == list(range(16)) and seen[16] == 0
    assert tx.stats.tx == 17 and tx.stats.saturated == 0
    assert tx.frame_evse_status(d) == 8 and tx.frame_evse_limits(d) == 8


def test_enum_names_match_controller_words():
    assert cm.MODE_NAMES[cm.MODE_CHARGE_ONLY] == "charge_only"
    assert cm.CP_STATE_NAMES.index("F") == cm.CP_STATE_F
    assert cm.LIMIT_CHARGE_SRC_NAMES.index("bms") == cm.LIMIT_CHARGE_SRC_BMS


def test_receive_and_send_allocate_nothing():
    import micropython

    rx = cm.CanRx()
    tx = cm.CanTx()
    frames = [_bms_status_bytes(500 + i, i) for i in range(4)]
    bad = bytearray(frames[0])
    bad[3] ^= 1
    out = bytearray(8)
    micropython.heap_lock()
    try:
        for i in range(4):
            rx.feed(cm.BMS_STATUS_ID, frames[i], 8, 1000 + i)
        rx.feed(cm.BMS_STATUS_ID, bad, 8, 2000)
        rx.feed(0x7FF, bad, 8, 2000)
        tx.frame_vcu_power_request(out)
        tx.frame_evse_status(out)
        tx.frame_evse_limits(out)
    finally:
        micropython.heap_unlock()
    assert rx.stats.rx_ok == 4 and rx.stats.bad_checksum == 1 and rx.stats.unknown_id == 1


WRAP = 1 << 30   # time.ticks_ms() wraps here on MicroPython


def test_bms_age_across_the_tick_wrap():
    rx = cm.CanRx()
    assert rx.feed(cm.BMS_STATUS_ID, _bms_status_bytes(500, 0), 8, WRAP - 40)
    assert rx.age_ms(0, 60) == 100          # wrapped to 60: 100 ms old, not -2**30
    assert rx.age_ms(0, WRAP - 40) == 0


def test_silent_bms_does_not_look_fresh_after_the_wrap():
    rx = cm.CanRx()
    assert rx.feed(cm.BMS_STATUS_ID, _bms_status_bytes(500, 0), 8, 1000)
    # older than 2**29 ms: not believable, and from then on never received
    assert rx.age_ms(0, 1000 + (1 << 29) + 1) >= 0x3FFFFFFF
    assert rx.age_ms(0, 1010) >= 0x3FFFFFFF   # ticks came round: still stale
    # a stamp from the future (now before it) is stale too, never negative
    assert rx.feed(cm.BMS_STATUS_ID, _bms_status_bytes(510, 1), 8, 5000)
    assert rx.age_ms(0, 4000) >= 0x3FFFFFFF
