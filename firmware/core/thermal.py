"""Thermal derating: linear from the derate point to the limit, stop at the limit.

Temperatures in 0.1 degC (dC). factor_pm() gives the allowed share of the rated
current in per-mille. At or above the limit the stage trips (V2G-009) and stays
tripped until the temperature falls below limit - hysteresis.
"""


class Derate:
    def __init__(self, derate_dc, limit_dc, hysteresis_dc):
        self.tripped = False
        self.temp_dc = 0
        self.factor = 1000
        self.configure(derate_dc, limit_dc, hysteresis_dc)

    def configure(self, derate_dc, limit_dc, hysteresis_dc):
        self.derate_dc = derate_dc
        self.limit_dc = limit_dc
        self.hysteresis_dc = hysteresis_dc

    def update(self, temp_dc):
        """New temperature; returns the factor in per-mille (0..1000)."""
        self.temp_dc = temp_dc
        lim = self.limit_dc
        if self.tripped:
            if temp_dc < lim - self.hysteresis_dc:
                self.tripped = False
        elif temp_dc >= lim:
            self.tripped = True
        if self.tripped:
            f = 0
        elif temp_dc <= self.derate_dc:
            f = 1000
        else:
            f = (lim - temp_dc) * 1000 // (lim - self.derate_dc)
            if f < 0:
                f = 0
        self.factor = f
        return f

    def apply(self, ma):
        """ma scaled by the current factor."""
        return ma * self.factor // 1000
