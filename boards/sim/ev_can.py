"""The simulated vehicle's BMS on CAN: the plant's battery state as 0x601/0x602/0x603 frames.

On the virtual board these frames leave the firmware's VM marked as the vehicle's, travel
over the board's CAN bus (where slcan clients see them too) and come back to the
controller's CAN port like any other node's frames.
"""
from core import can_msgs as M

PACK_NOMINAL_MV = 400000   # pack voltage reported: a 400 V class battery
CELL_NOMINAL_MV = 3700


class PlantBms:
    def __init__(self):
        self.status = M.BmsStatus()
        self.limits = M.BmsLimits()
        self.info = M.BmsInfo()
        self.next_fast_ms = None
        self.next_info_ms = None
        self.sent = 0

    def frames(self, plant, now_ms, emit):
        """emit(can_id, data, dlc) for each frame due at now_ms (nothing with CAN lost or unplugged)."""
        if not plant.plugged or plant.can_lost:
            self.next_fast_ms = None
            self.next_info_ms = None
            return
        if self.next_fast_ms is None or now_ms - self.next_fast_ms >= 0:
            late = self.next_fast_ms is None or now_ms - self.next_fast_ms >= M.BMS_STATUS_CYCLE_MS
            self.next_fast_ms = (now_ms if late else self.next_fast_ms) + M.BMS_STATUS_CYCLE_MS
            d = bytearray(8)
            s = self.status
            s.soc_pm = plant.soc_pm()
            s.pack_voltage_mv = PACK_NOMINAL_MV
            # battery current from the AC side at unity efficiency: P = V_grid * I_grid
            s.pack_current_ma = plant.ev_ma * (plant.grid_mv // 1000) // (PACK_NOMINAL_MV // 1000)
            s.temp_max_dc = plant.battery_temp_dc
            M.pack_bms_status(s, d)
            s.counter = (s.counter + 1) & 15
            emit(M.BMS_STATUS_ID, d, 8)
            d = bytearray(8)
            lim = self.limits
            lim.max_charge_current_ma = plant.bms_charge_ma()
            lim.max_discharge_current_ma = plant.bms_discharge_ma()
            lim.fault_bits = 0
            lim.temp_min_dc = plant.battery_temp_dc
            M.pack_bms_limits(lim, d)
            lim.counter = (lim.counter + 1) & 15
            emit(M.BMS_LIMITS_ID, d, 8)
            self.sent += 2
        if self.next_info_ms is None or now_ms - self.next_info_ms >= 0:
            self.next_info_ms = now_ms + M.BMS_INFO_CYCLE_MS
            d = bytearray(8)
            i = self.info
            i.capacity_wh = plant.capacity_wh
            i.cell_volt_min_mv = CELL_NOMINAL_MV
            i.cell_volt_max_mv = CELL_NOMINAL_MV
            i.soh_pm = 1000
            M.pack_bms_info(i, d)
            emit(M.BMS_INFO_ID, d, 8)
            self.sent += 1
