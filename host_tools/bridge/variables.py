"""Controller settings as OCPP device-model variables.

Every key of v2g_vars.json is a variable of one component, `V2GController`
(variable name = the key, e.g. MAX_DISCHARGE_AMPS). The values come from the
controller (config_get) and changes go to it (config_set): the controller is
the one that validates, so a value it refuses is reported Rejected with its
reason and nothing changes. OCPP carries every value as a string; the type of
the controller's current value says how to read it back.

A few variables of the standard components are also answered, read-only, so
a CSMS's usual probes get values rather than UnknownComponent.
"""

COMPONENT = "V2GController"


def data_type(value) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "decimal"
    return "string"


def to_text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return str(value)


def from_text(text: str, current):
    """Parse an OCPP attribute value as the type of the current value.

    ValueError names the expected type; the range check is the controller's. A setting
    whose value is null now (an optional number: null = the profile's default) takes a
    number, or "null"/"" to go back to the default."""
    if current is None:
        t = text.strip()
        if t.lower() in ("", "null", "none"):
            return None
        return from_text(t, 0.0)
    if isinstance(current, bool):
        t = text.strip().lower()
        if t in ("true", "false"):
            return t == "true"
        raise ValueError(f"{text!r} is not true or false")
    if isinstance(current, (int, float)):
        t = text.strip()
        try:
            v = int(t)
        except ValueError:
            try:
                v = float(t)
            except ValueError:
                raise ValueError(f"{text!r} is not a number") from None
            if v != v or v in (float("inf"), float("-inf")):
                raise ValueError(f"{text!r} is not a finite number") from None
        return v
    return text


def report_entries(values: dict, readonly: dict) -> list:
    """reportData entries (camelCase dicts) for NotifyReport: the controller's
    settings (ReadWrite) and the bridge's own read-only variables."""
    out = []
    for key in sorted(values):
        v = values[key]
        out.append({
            "component": {"name": COMPONENT},
            "variable": {"name": key},
            "variableAttribute": [{"type": "Actual", "value": to_text(v)[:2500],
                                   "mutability": "ReadWrite", "persistent": True}],
            "variableCharacteristics": {"dataType": data_type(v), "supportsMonitoring": False},
        })
    for (comp, name), v in sorted(readonly.items()):
        out.append({
            "component": {"name": comp},
            "variable": {"name": name},
            "variableAttribute": [{"type": "Actual", "value": to_text(v)[:2500],
                                   "mutability": "ReadOnly"}],
            "variableCharacteristics": {"dataType": data_type(v), "supportsMonitoring": False},
        })
    return out
