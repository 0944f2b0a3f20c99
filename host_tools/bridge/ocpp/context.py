"""What every functional block of the station shares: who it is, the controller, the
central log, and the link to the CSMS of the moment. Blocks talk to each other only
through public methods; this is the only state they all see."""

import asyncio
import logging
from datetime import datetime, timezone

import websockets.exceptions

from host_tools.bridge.ocpp.connection import CallRefused

log = logging.getLogger(__name__)

EVSE = {"id": 1, "connectorId": 1}
VENDOR = "OpenV2G"
MODEL = "V2G-Controller"


def utcnow():
    return datetime.now(timezone.utc)


def status_info(reason, info=None):
    """An OCPP StatusInfoType: a reason code and, if given, why (cut to the schema's 512)."""
    d = {"reasonCode": reason}
    if info:
        d["additionalInfo"] = str(info)[:512]
    return d


class StationContext:
    """ctl: the controller facade (command, sample, fw, serial, fota ...); clog: the
    central log; security: the security profile; cp: the CSMS connection while a session
    runs (anything with `call_raw`); counters: figures for the diagnostic report."""

    def __init__(self, station_id, ctl, clog, security, device_model=None):
        self.id = station_id
        self.device_model = device_model     # the standard variables (device_model.DeviceModel)
        self.ctl = ctl
        self.clog = clog
        self.security = security
        self.cp = None
        self.version = None
        self.connected = asyncio.Event()     # boot accepted, CSMS reachable
        self.counters = {"tx_events_sent": 0, "tx_events_offline": 0, "connects": 0}

    def event(self, code, msg):
        self.clog.event(self.id, code, msg)

    def count(self, name):
        self.counters[name] = self.counters.get(name, 0) + 1
        return self.counters[name]

    async def call(self, action, payload):
        """A CALL when connected; returns the answer or None (logged) otherwise."""
        cp = self.cp
        if cp is None or not self.connected.is_set():
            return None
        try:
            return await cp.call_raw(action, payload)
        except (asyncio.TimeoutError, CallRefused, websockets.exceptions.ConnectionClosed) as e:
            log.info("%s: %s not delivered: %s", self.id, action, e)
            return None
