"""Error codes in the driver's words: what it means and what to do (the app's troubleshooting
table). Codes not listed here are shown with the meaning from docs/errors.md's wording."""

TABLE = {
    "V2G-009": ("too hot: power reduced or stopped", "Nothing to do: it resumes when it has cooled down."),
    "V2G-010": ("control pilot fault on the cable", "Unplug the cable and plug it in again; if it stays, call service."),
    "V2G-011": ("contactor fault: the station stopped for safety", "Call service: an operator must check and clear it."),
    "V2G-012": ("the vehicle asks for ventilation, which this site has not", "Charge elsewhere or ask the site owner."),
    "V2G-013": ("cooling not working: power reduced", "Call service if it stays."),
    "V2G-020": ("stored settings were damaged and rebuilt", "Call service to acknowledge it."),
    "V2G-021": ("the station's storage is full", "Call service."),
    "V2G-101": ("the station lost its gateway: charge-only for safety", "Wait: V2G comes back with the gateway and your next setting."),
    "V2G-110": ("the station answers slowly or not at all", "Try again in a moment."),
    "V2G-120": ("the energy meter does not answer: no discharge", "Call service if it stays."),
    "V2G-130": ("no data from the vehicle's battery: no discharge", "Check the cable is fully plugged in."),
    "V2G-140": ("a session handshake timed out", "It retries by itself; unplug and plug in again if it stays."),
    "V2G-150": ("the vehicle's digital link failed: basic charging only", "Unplug and plug in again."),
    "V2G-301": ("V2G unavailable: battery at or below your reserve", "Raise the SoC target or lower the reserve margin."),
    "V2G-400": ("the setting was refused", "Check the value and try again."),
    "V2G-401": ("you are not logged in any more", "Log in again."),
    "V2G-403": ("this station is not yours, or your account may not do this", "Ask the operator to assign the station to you."),
    "V2G-409": ("the same action is still being processed", "Wait for the result."),
    "V2G-503": ("grid voltage too high: the station disconnected", "Nothing to do: it reconnects when the grid is back to normal."),
    "V2G-504": ("grid voltage too low: the station disconnected", "Nothing to do: it reconnects when the grid is back to normal."),
    "V2G-505": ("grid frequency too high: the station disconnected", "Nothing to do: it reconnects when the grid is back to normal."),
    "V2G-506": ("grid frequency too low: the station disconnected", "Nothing to do: it reconnects when the grid is back to normal."),
    "V2G-507": ("waiting for the grid to be stable before starting", "Nothing to do: it starts by itself."),
}


def explain(code):
    meaning, action = TABLE.get(code, ("station error", "Call service if it stays."))
    return {"code": code, "meaning": meaning, "action": action}


# the bridge's reasons (host_tools/bridge/service.py v2g_reason) in the driver's words
_REASONS = (
    ("charge-only asked", "charge-only"),
    ("V2G-301", "battery at or below your reserve"),
    ("no vehicle connected", "no vehicle plugged in"),
    ("controller offline", "station offline"),
    ("bridge offline", "station offline"),
    ("gateway offline", "station offline"),
    ("no news from the station", "station offline"),
    ("station never seen", "station not connected yet"),
    ("V2G-101", "the station lost its gateway (charge-only for safety)"),
    ("session stopped", "charging stopped by the operator"),
)


def v2g_text(available, reason):
    """'V2G available' or 'V2G unavailable: <why, plainly>'."""
    if available:
        return "V2G available"
    r = reason or ""
    for key, plain in _REASONS:
        if r.startswith(key):
            return f"V2G unavailable: {plain}"
    code = r.split(" ", 1)[0]
    if code in TABLE:
        return f"V2G unavailable: {TABLE[code][0]}"
    return f"V2G unavailable: {r}" if r else "V2G unavailable"
