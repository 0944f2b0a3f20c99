"""The standard components of the OCPP 2.0.1 device model (Part 2, Appendix "Referenced
Components and Variables") that every station has, with their mutability, data type and
limits. The controller's own settings (component `V2GController`) stay in variables.py:
the controller holds and checks them.

A variable is bound to what it drives (`get`/`set`: HeartbeatInterval is the heartbeat,
WebSocketPingInterval the keepalive, MessageAttempts the TransactionEvent retries) or, when
this station only has to remember it, stored in `device_model.json` under the state dir.
A value is checked in full before anything changes: a Rejected SetVariables changes nothing.
"""

import logging

from host_tools.bridge.queue import read_json, write_json_atomic

log = logging.getLogger(__name__)

# what transactions.meter_value() measures: a measurand list may only name these
MEASURANDS = ("Energy.Active.Import.Register", "Energy.Active.Export.Register", "Power.Active.Import",
              "Power.Active.Export", "Current.Import", "Current.Export", "Voltage", "SoC")
ITEMS_PER_MESSAGE = 20      # DeviceDataCtrlr.ItemsPerMessage: GetVariables/SetVariables/GetReport
BYTES_PER_MESSAGE = 65536
PERIODS_PER_SCHEDULE = 24   # SmartChargingCtrlr.PeriodsPerSchedule
PROFILE_STACK_LEVEL = 8     # SmartChargingCtrlr.ProfileStackLevel
PROFILE_ENTRIES = 16        # SmartChargingCtrlr.Entries[ChargingProfiles]


class Var:
    """One variable (attribute Actual only). key = (component, component instance, variable,
    variable instance); None instances are the plain ones."""

    def __init__(self, component, name, data_type, mutability="ReadWrite", default=None, *, instance=None,
                 unit=None, min_limit=None, max_limit=None, values_list=None, get=None, set=None,  # noqa: A002
                 max_len=None, check=None):
        self.component, self.name, self.instance = component, name, instance
        self.data_type, self.mutability, self.default = data_type, mutability, default
        self.unit, self.min_limit, self.max_limit = unit, min_limit, max_limit
        self.values_list, self.get, self.set, self.max_len = values_list, get, set, max_len
        self.check = check      # fn(value): ValueError when it does not fit with other variables
        self.persistent = True  # kept in device_model.json; a bound one is what its block keeps

    @property
    def key(self):
        return (self.component, None, self.name, self.instance)

    def parse(self, text):
        """The value of `text` as this variable's type, or ValueError naming why."""
        t = self.data_type
        if t == "integer":
            try:
                v = int(text.strip())
            except ValueError:
                raise ValueError(f"{text!r} is not an integer") from None
        elif t == "decimal":
            try:
                v = float(text.strip())
            except ValueError:
                raise ValueError(f"{text!r} is not a number") from None
            if v != v or v in (float("inf"), float("-inf")):
                raise ValueError(f"{text!r} is not a finite number")
        elif t == "boolean":
            if text.strip().lower() not in ("true", "false"):
                raise ValueError(f"{text!r} is not true or false")
            v = text.strip().lower() == "true"
        elif t == "OptionList":
            v = text.strip()
            if v not in self.values_list:
                raise ValueError(f"{text!r} is not one of {','.join(self.values_list)}")
        elif t in ("MemberList", "SequenceList"):
            v = [m.strip() for m in text.split(",") if m.strip()]
            bad = [m for m in v if m not in self.values_list]
            if bad:
                raise ValueError(f"{','.join(bad)} not supported (supported: {','.join(self.values_list)})")
            if len(set(v)) != len(v):
                raise ValueError(f"{text!r} names a member twice")
            v = ",".join(v)
        else:
            v = text
            if self.max_len is not None and len(v) > self.max_len:
                raise ValueError(f"longer than {self.max_len} characters")
        if t in ("integer", "decimal"):
            if self.min_limit is not None and v < self.min_limit:
                raise ValueError(f"{v} is below the minimum {self.min_limit}")
            if self.max_limit is not None and v > self.max_limit:
                raise ValueError(f"{v} is above the maximum {self.max_limit}")
        if self.check is not None:
            self.check(v)
        return v

    def characteristics(self):
        c = {"dataType": self.data_type, "supportsMonitoring": False}
        if self.unit:
            c["unit"] = self.unit
        if self.min_limit is not None:
            c["minLimit"] = self.min_limit
        if self.max_limit is not None:
            c["maxLimit"] = self.max_limit
        if self.values_list:
            c["valuesList"] = ",".join(self.values_list)
        return c


def text_of(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class DeviceModel:
    """The standard variables; `bind` ties one to what it drives."""

    def __init__(self, state_dir):
        self._file = state_dir / "device_model.json"
        self._stored = read_json(self._file, {}) or {}
        self.vars = {}
        self.changed = []      # fn(var, value) after a successful set: security events
        for v in _standard():
            self.vars[v.key] = v

    def bind(self, component, name, get, set=None, instance=None, check=None, persistent=False):  # noqa: A002
        v = self.vars[(component, None, name, instance)]
        v.get, v.set, v.persistent = get, set, persistent
        if check is not None:
            v.check = check

    # ------------------------------------------------------------------ lookup

    def find(self, component, name, instance=None):
        """(attribute status, Var or None): Accepted, UnknownComponent or UnknownVariable."""
        v = self.vars.get((component, None, name, instance))
        if v is not None:
            return "Accepted", v
        if any(k[0] == component for k in self.vars):
            return "UnknownVariable", None
        return "UnknownComponent", None

    def components(self):
        return sorted({k[0] for k in self.vars})

    def value(self, v):
        if v.get is not None:
            return v.get()
        return self.stored(v)

    def stored(self, v):
        """The value kept in device_model.json (the default until one is set)."""
        return self._stored.get(_skey(v), v.default)

    def store(self, v, value):
        self._stored[_skey(v)] = value
        write_json_atomic(self._file, self._stored)

    def text(self, v):
        return text_of(self.value(v))

    def typed(self, component, name, instance=None):
        """The value (typed) of a variable, for the blocks that read them."""
        return self.value(self.vars[(component, None, name, instance)])

    def set_text(self, v, text):
        """Set from a SetVariables value; (status, reason or None). Nothing changes unless Accepted."""
        if v.mutability == "ReadOnly":
            return "Rejected", "ReadOnly"
        try:
            value = v.parse(text)
        except ValueError as e:
            return "Rejected", str(e)
        if v.set is not None:
            v.set(value)
        else:
            self.store(v, value)
        for fn in self.changed:
            fn(v, value)
        return "Accepted", None

    def report_entry(self, v):
        attr = {"type": "Actual", "mutability": v.mutability, "persistent": v.persistent}
        if v.mutability != "WriteOnly":
            attr["value"] = self.text(v)[:2500]
        comp = {"name": v.component}
        var = {"name": v.name}
        if v.instance:
            var["instance"] = v.instance
        return {"component": comp, "variable": var, "variableAttribute": [attr],
                "variableCharacteristics": v.characteristics()}


def _skey(v):
    return ".".join(x for x in (v.component, v.name, v.instance) if x)


def _standard():
    """Every variable Part 2 requires of a station with one EVSE and one connector, plus the
    optional ones this station acts on."""
    RW, RO = "ReadWrite", "ReadOnly"
    meas = MEASURANDS
    return [
        # B Provisioning: the device model's own limits
        Var("DeviceDataCtrlr", "ItemsPerMessage", "integer", RO, ITEMS_PER_MESSAGE, instance="GetReport"),
        Var("DeviceDataCtrlr", "ItemsPerMessage", "integer", RO, ITEMS_PER_MESSAGE, instance="GetVariables"),
        Var("DeviceDataCtrlr", "ItemsPerMessage", "integer", RO, ITEMS_PER_MESSAGE, instance="SetVariables"),
        Var("DeviceDataCtrlr", "BytesPerMessage", "integer", RO, BYTES_PER_MESSAGE, instance="GetReport"),
        Var("DeviceDataCtrlr", "BytesPerMessage", "integer", RO, BYTES_PER_MESSAGE, instance="GetVariables"),
        Var("DeviceDataCtrlr", "BytesPerMessage", "integer", RO, BYTES_PER_MESSAGE, instance="SetVariables"),
        Var("DeviceDataCtrlr", "ConfigurationValueSize", "integer", RO, 1000),
        Var("DeviceDataCtrlr", "ReportingValueSize", "integer", RO, 2500),
        # OCPP-J and the connection (Part 4): bound by the station
        Var("OCPPCommCtrlr", "HeartbeatInterval", "integer", RW, 60, unit="s", min_limit=1, max_limit=86400),
        Var("OCPPCommCtrlr", "OfflineThreshold", "integer", RW, 60, unit="s", min_limit=0, max_limit=86400),
        Var("OCPPCommCtrlr", "MessageTimeout", "integer", RO, 30, instance="Default", unit="s"),
        Var("OCPPCommCtrlr", "MessageAttempts", "integer", RW, 3, instance="TransactionEvent",
            min_limit=1, max_limit=100),
        Var("OCPPCommCtrlr", "MessageAttemptInterval", "integer", RW, 10, instance="TransactionEvent",
            unit="s", min_limit=0, max_limit=3600),
        Var("OCPPCommCtrlr", "WebSocketPingInterval", "integer", RW, 30, unit="s", min_limit=0, max_limit=3600),
        Var("OCPPCommCtrlr", "RetryBackOffWaitMinimum", "integer", RW, 3, unit="s", min_limit=1, max_limit=3600),
        Var("OCPPCommCtrlr", "RetryBackOffRandomRange", "integer", RW, 10, unit="s", min_limit=0, max_limit=3600),
        Var("OCPPCommCtrlr", "RetryBackOffRepeatTimes", "integer", RW, 5, min_limit=0, max_limit=20),
        Var("OCPPCommCtrlr", "NetworkConfigurationPriority", "SequenceList", RO, "0", values_list=("0",)),
        Var("OCPPCommCtrlr", "NetworkProfileConnectionAttempts", "integer", RW, 3, min_limit=1, max_limit=100),
        Var("OCPPCommCtrlr", "ResetRetries", "integer", RW, 1, min_limit=0, max_limit=10),
        Var("OCPPCommCtrlr", "FileTransferProtocols", "MemberList", RO, "HTTP,HTTPS",
            values_list=("HTTP", "HTTPS")),
        Var("OCPPCommCtrlr", "UnlockOnEVSideDisconnect", "boolean", RO, True),
        # A Security
        Var("SecurityCtrlr", "SecurityProfile", "integer", RO, 0),
        Var("SecurityCtrlr", "OrganizationName", "string", RW, "", max_len=1000),
        Var("SecurityCtrlr", "CertificateEntries", "integer", RO, 0),
        # C Authorization: this station has no reader; the CSMS's idToken is taken as given
        Var("AuthCtrlr", "AuthorizeRemoteStart", "boolean", RO, False),
        Var("AuthCtrlr", "LocalAuthorizeOffline", "boolean", RO, False),
        Var("AuthCtrlr", "LocalPreAuthorize", "boolean", RO, False),
        # E Transactions: the cable is the start and the stop point
        Var("TxCtrlr", "EVConnectionTimeOut", "integer", RW, 60, unit="s", min_limit=0, max_limit=3600),
        Var("TxCtrlr", "StopTxOnEVSideDisconnect", "boolean", RO, True),
        Var("TxCtrlr", "StopTxOnInvalidId", "boolean", RO, True),
        Var("TxCtrlr", "TxStartPoint", "MemberList", RW, "EVConnected", values_list=("EVConnected",)),
        Var("TxCtrlr", "TxStopPoint", "MemberList", RW, "EVConnected", values_list=("EVConnected",)),
        # J MeterValues
        Var("SampledDataCtrlr", "TxStartedMeasurands", "MemberList", RW, ",".join(meas), values_list=meas),
        Var("SampledDataCtrlr", "TxEndedMeasurands", "MemberList", RW, ",".join(meas), values_list=meas),
        # no sampled values inside the Ended event and no clock-aligned readings: read-only 0 (off)
        Var("SampledDataCtrlr", "TxEndedInterval", "integer", RO, 0, unit="s"),
        Var("SampledDataCtrlr", "TxUpdatedMeasurands", "MemberList", RW, ",".join(meas), values_list=meas),
        Var("SampledDataCtrlr", "TxUpdatedInterval", "integer", RW, 60, unit="s", min_limit=1, max_limit=86400),
        Var("AlignedDataCtrlr", "Measurands", "MemberList", RO, "", values_list=meas),
        Var("AlignedDataCtrlr", "Interval", "integer", RO, 0, unit="s"),
        Var("AlignedDataCtrlr", "TxEndedMeasurands", "MemberList", RO, "", values_list=meas),
        Var("AlignedDataCtrlr", "TxEndedInterval", "integer", RO, 0, unit="s"),
        # K SmartCharging: what a profile may ask of this station
        Var("SmartChargingCtrlr", "Enabled", "boolean", RO, True),
        Var("SmartChargingCtrlr", "Entries", "integer", RO, PROFILE_ENTRIES, instance="ChargingProfiles"),
        Var("SmartChargingCtrlr", "LimitChangeSignificance", "decimal", RW, 1.0, min_limit=0, max_limit=100),
        Var("SmartChargingCtrlr", "PeriodsPerSchedule", "integer", RO, PERIODS_PER_SCHEDULE),
        Var("SmartChargingCtrlr", "ProfileStackLevel", "integer", RO, PROFILE_STACK_LEVEL),
        Var("SmartChargingCtrlr", "RateUnit", "MemberList", RO, "A,W", values_list=("A", "W")),
        # the station itself
        Var("ChargingStation", "Model", "string", RO, ""),
        Var("ChargingStation", "VendorName", "string", RO, ""),
        Var("ChargingStation", "FirmwareVersion", "string", RO, ""),
        Var("ChargingStation", "AvailabilityState", "OptionList", RO, "Available",
            values_list=("Available", "Occupied", "Reserved", "Unavailable", "Faulted")),
        Var("ChargingStation", "Available", "boolean", RO, True),
        Var("ChargingStation", "SupplyPhases", "integer", RO, 1),
        Var("ClockCtrlr", "DateTime", "dateTime", RO, ""),
        Var("ClockCtrlr", "TimeSource", "SequenceList", RW, "Heartbeat", values_list=("Heartbeat",)),
    ]
