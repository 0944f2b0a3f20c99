"""Core: GetConfiguration / ChangeConfiguration.

Two kinds of keys. The OCPP 1.6 keys the station itself acts on (HeartbeatInterval,
MeterValueSampleInterval, WebSocketPingInterval, ...) are kept here, checked here and
stored in `configuration.json`. Every key of `v2g_vars.json` (MAX_CHARGE_AMPS, ...) is
the controller's: read with `config_get`, changed with one `config_set`, and the
controller validates; a value it refuses is Rejected (the reason goes to the central
log: a 1.6 answer has no field for it) and nothing changes."""

import logging

from host_tools import link as hl
from host_tools.bridge import variables as var
from host_tools.bridge.ocpp16.connection import on
from host_tools.bridge.queue import read_json, write_json_atomic

log = logging.getLogger(__name__)

# the measurands the station can report (what meter values are built from)
MEASURANDS = ("Energy.Active.Import.Register", "Energy.Active.Export.Register", "Power.Active.Import",
              "Power.Active.Export", "Current.Import", "Current.Export", "Voltage", "SoC")
KEY_MAX, VALUE_MAX = 50, 500          # the 1.6 schema's lengths of a key and a value


def _int(lo=0, hi=86400):
    def check(text):
        try:
            v = int(text.strip())
        except ValueError:
            raise ValueError(f"{text!r} is not a whole number") from None
        if not lo <= v <= hi:
            raise ValueError(f"{v} is not in {lo} .. {hi}")
        return v
    return check


def _bool(text):
    t = text.strip().lower()
    if t not in ("true", "false"):
        raise ValueError(f"{text!r} is not true or false")
    return t == "true"


def _measurands(text):
    items = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in items if x not in MEASURANDS]
    if bad:
        raise ValueError(f"{', '.join(bad)} not supported (supported: {', '.join(MEASURANDS)})")
    return ",".join(items)


def _text(maxlen):
    def check(text):
        if not 1 <= len(text) <= maxlen:
            raise ValueError(f"must be 1 to {maxlen} characters")
        return text
    return check


# key -> (default, parse of a new value or None when read-only)
KEYS = {
    "AuthorizeRemoteTxRequests": (True, _bool),
    "ClockAlignedDataInterval": (0, _int()),
    "ConnectionTimeOut": (60, _int(1)),
    "GetConfigurationMaxKeys": (100, None),
    "HeartbeatInterval": (300, _int(1)),
    "LocalAuthorizeOffline": (False, None),
    "LocalPreAuthorize": (False, None),
    "MeterValuesAlignedData": ("Energy.Active.Import.Register", _measurands),
    "MeterValuesSampledData": (",".join(MEASURANDS), _measurands),
    "MeterValueSampleInterval": (60, _int()),
    "NumberOfConnectors": (1, None),
    "ResetRetries": (1, _int(0, 10)),
    "StopTransactionOnEVSideDisconnect": (True, None),
    "StopTransactionOnInvalidId": (True, _bool),
    "StopTxnAlignedData": ("", _measurands),
    "StopTxnSampledData": ("Energy.Active.Import.Register,Energy.Active.Export.Register", _measurands),
    "SupportedFeatureProfiles": ("Core,FirmwareManagement,SmartCharging,RemoteTrigger", None),
    "TransactionMessageAttempts": (3, _int(1, 100)),
    "TransactionMessageRetryInterval": (60, _int(1, 3600)),
    "UnlockConnectorOnEVSideDisconnect": (True, None),
    "WebSocketPingInterval": (60, _int(0, 3600)),
    # SmartCharging
    "ChargeProfileMaxStackLevel": (8, None),
    "ChargingScheduleAllowedChargingRateUnit": ("Current,Power", None),
    "ChargingScheduleMaxPeriods": (1024, None),
    "MaxChargingProfilesInstalled": (16, None),
    # security extension: set with `v2g bridge --security-profile` (the gateway's TLS and
    # credentials must be in place before a CSMS may ask for a higher one)
    "SecurityProfile": (0, None),
    # vendor: the idTag of a transaction started by plugging in (no remote start): 1.6
    # needs one; the CSMS can refuse it in the StartTransaction answer
    "PlugInIdTag": ("", _text(20)),
}


class Configuration:
    def __init__(self, ctx, state_dir, meter_interval_s=60.0):
        self.ctx = ctx
        self._file = state_dir / "configuration.json"
        stored = read_json(self._file, {}) or {}
        self.values = {k: d for k, (d, _) in KEYS.items()}
        self.values["MeterValueSampleInterval"] = int(meter_interval_s)
        self.values["SecurityProfile"] = ctx.security.profile
        self.values["PlugInIdTag"] = ctx.id[:20]
        for k, v in stored.items():
            if k in KEYS and KEYS[k][1] is not None:
                self.values[k] = v

    def __getitem__(self, key):
        return self.values[key]

    def set(self, key, value):
        """Set a station key (already parsed) and keep it across restarts. An unchanged value
        writes nothing (every boot sets HeartbeatInterval; a site boots 1,000 stations at once)."""
        if self.values.get(key) == value and type(self.values.get(key)) is type(value):
            return
        self.values[key] = value
        write_json_atomic(self._file, {k: v for k, v in self.values.items() if KEYS[k][1] is not None})

    async def _controller_values(self):
        try:
            res = await self.ctx.ctl.command("config_get", {})
        except hl.LinkError as e:
            log.info("%s: config_get: %s", self.ctx.id, e)
            return None
        return res.data.get("values", {}) if res.ok else None

    @on("GetConfiguration")
    async def on_get_configuration(self, key=None, **_):
        ctl_values = await self._controller_values()
        rows, unknown = [], []
        wanted = key if key else list(self.values) + sorted(ctl_values or {})
        for k in wanted:
            if k in self.values:
                rows.append({"key": k, "readonly": KEYS[k][1] is None,
                             "value": var.to_text(self.values[k])[:VALUE_MAX]})
            elif ctl_values is not None and k in ctl_values:
                rows.append({"key": k, "readonly": False, "value": var.to_text(ctl_values[k])[:VALUE_MAX]})
            else:
                unknown.append(k[:KEY_MAX])
        out = {"configurationKey": rows}
        if unknown:
            out["unknownKey"] = unknown
        return out

    @on("ChangeConfiguration")
    async def on_change_configuration(self, key, value, **_):
        if key in KEYS:
            parse = KEYS[key][1]
            if parse is None:
                self.ctx.event("V2G-400", f"ChangeConfiguration {key}: read-only")
                return {"status": "Rejected"}
            try:
                v = parse(value)
            except ValueError as e:
                self.ctx.event("V2G-400", f"ChangeConfiguration {key}={value!r} rejected: {e}")
                return {"status": "Rejected"}
            self.set(key, v)
            self.ctx.event("INFO", f"configuration {key} = {v!r}")
            return {"status": "Accepted"}
        ctl_values = await self._controller_values()
        if ctl_values is None or key not in ctl_values:
            # offline controller: its keys cannot be checked, so none is taken
            return {"status": "NotSupported" if ctl_values is not None else "Rejected"}
        try:
            v = var.from_text(value, ctl_values[key])
        except ValueError as e:
            self.ctx.event("V2G-400", f"ChangeConfiguration {key}={value!r} rejected: {e}")
            return {"status": "Rejected"}
        try:
            res = await self.ctx.ctl.command("config_set", {key: v})
        except hl.LinkError as e:
            self.ctx.event("V2G-400", f"ChangeConfiguration {key}: controller unreachable: {e}")
            return {"status": "Rejected"}
        if not res.ok:
            self.ctx.event("V2G-400", f"ChangeConfiguration {key}={value!r} refused by the controller: "
                           f"{res.code}: {res.msg}")
            return {"status": "Rejected"}
        self.ctx.event("INFO", f"controller setting {key} = {v!r}")
        return {"status": "Accepted"}
