"""A tiny OCPP 2.0.1 CSMS for trying `v2g bridge` on one machine (docs/bridge.md, quick start).

    python tools/loopback_csms.py                 # ws://127.0.0.1:9000/ocpp/<station id>
    python tools/loopback_csms.py --max-a 10      # and cap each station at 10 A once it boots

It accepts every station, answers what a station sends (BootNotification, Heartbeat,
StatusNotification, TransactionEvent, MeterValues, NotifyReport, ...) and prints each message
on one line. With --max-a it sends a ChargingStationMaxProfile after the boot, which the
bridge turns into the controller's `limit` command. Not a CSMS for production: no
authentication, no TLS, nothing stored.
"""

import argparse
import asyncio
import json
import time

import websockets
from ocpp.routing import on
from ocpp.v201 import ChargePoint, call, call_result


def _now():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _show(station, action, payload):
    print("{} {} {} {}".format(time.strftime("%H:%M:%S"), station, action, json.dumps(payload)), flush=True)


class Station(ChargePoint):
    max_a = None

    @on("BootNotification")
    async def on_boot(self, **kw):
        _show(self.id, "BootNotification", kw)
        if self.max_a is not None:
            asyncio.get_running_loop().call_later(1, lambda: asyncio.ensure_future(self.cap(self.max_a)))
        return call_result.BootNotification(current_time=_now(), interval=30, status="Accepted")

    @on("Heartbeat")
    async def on_heartbeat(self, **kw):
        return call_result.Heartbeat(current_time=_now())

    @on("StatusNotification")
    async def on_status(self, **kw):
        _show(self.id, "StatusNotification", kw)
        return call_result.StatusNotification()

    @on("TransactionEvent")
    async def on_tx(self, **kw):
        _show(self.id, "TransactionEvent", kw)
        return call_result.TransactionEvent()

    @on("MeterValues")
    async def on_meter(self, **kw):
        _show(self.id, "MeterValues", kw)
        return call_result.MeterValues()

    @on("NotifyReport")
    async def on_report(self, **kw):
        return call_result.NotifyReport()

    @on("FirmwareStatusNotification")
    async def on_fw(self, **kw):
        _show(self.id, "FirmwareStatusNotification", kw)
        return call_result.FirmwareStatusNotification()

    async def cap(self, amps):
        profile = {"id": 1, "stack_level": 0, "charging_profile_purpose": "ChargingStationMaxProfile",
                   "charging_profile_kind": "Absolute",
                   "charging_schedule": [{"id": 1, "start_schedule": _now(), "charging_rate_unit": "A",
                                          "charging_schedule_period": [{"start_period": 0, "limit": amps}]}]}
        res = await self.call(call.SetChargingProfile(evse_id=0, charging_profile=profile))
        _show(self.id, "SetChargingProfile {} A ->".format(amps), {"status": res.status})


async def serve(host, port):
    async def handler(ws):
        station = Station(ws.request.path.rstrip("/").rsplit("/", 1)[-1], ws)
        _show(station.id, "connected", {"subprotocol": ws.subprotocol})
        try:
            await station.start()
        except websockets.ConnectionClosed:
            _show(station.id, "disconnected", {})

    async with websockets.serve(handler, host, port, subprotocols=["ocpp2.0.1"]):
        print("CSMS on ws://{}:{}/ocpp (Ctrl-C stops)".format(host, port), flush=True)
        await asyncio.Future()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9000)
    ap.add_argument("--max-a", type=float, default=None, help="cap each station at this current after boot")
    args = ap.parse_args()
    Station.max_a = args.max_a
    try:
        asyncio.run(serve(args.host, args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
