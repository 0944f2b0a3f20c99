"""Core transactions: Authorize, StartTransaction, StopTransaction, MeterValues (sampled
and clock-aligned), RemoteStartTransaction, RemoteStopTransaction, and the offline queue.

Telemetry from the controller drives the transaction: cable in -> StartTransaction
(idTag of a waiting remote start, else the `PlugInIdTag` key), cable out / remote stop /
reset -> StopTransaction with the Transaction.Begin and .End meter values.

StartTransaction, StopTransaction and MeterValues go through the disk queue first
(OCPP 1.6 4.7 "transaction-related messages"), so an outage or a restart of the bridge
loses none; they are sent in order after a reconnect. A transaction started offline has
no CSMS transactionId yet: it is known by a local key, and the queued messages behind its
StartTransaction get the id the CSMS answered with when they are sent."""

import asyncio
import inspect
import logging
import math
import uuid
from datetime import timedelta

import websockets.exceptions

from host_tools import link as hl
from host_tools.bridge import profiles as prof
from host_tools.bridge.ocpp.context import utcnow
from host_tools.bridge.ocpp16.connection import CallRefused, OCPPError, after, on, stop_if_cancelled
from host_tools.bridge.offline import PERMANENT_ERRORS, OfflineQueue
from host_tools.bridge.queue import read_json, write_json_atomic

log = logging.getLogger(__name__)

PLUGGED = ("B", "C", "D")


def charging_status(s):
    """The 1.6 ChargePointStatus of a plugged connector with a transaction."""
    mode, cp = s.get("mode"), s.get("cp")
    if mode in ("charging", "discharging"):
        return "Charging"
    if mode == "paused" or cp == "B":
        return "SuspendedEV"
    return "SuspendedEVSE"


def sampled_values(s, measurands, context):
    """1.6 SampledValues (values are text) of the measurands asked, from a controller sample."""
    ma, w = s.get("ma", 0), s.get("w", 0)
    table = {"Energy.Active.Import.Register": (s.get("e_in_wh", 0), "Wh"),
             "Energy.Active.Export.Register": (s.get("e_out_wh", 0), "Wh"),
             "Power.Active.Import": (max(w, 0), "W"), "Power.Active.Export": (max(-w, 0), "W"),
             "Current.Import": (max(ma, 0) / 1000, "A"), "Current.Export": (max(-ma, 0) / 1000, "A"),
             "Voltage": (s.get("mv", 0) / 1000, "V")}
    soc = hl.soc_pct(s)
    if soc is not None and s.get("cp") in PLUGGED:
        table["SoC"] = (soc, "Percent")
    out = []
    for m in measurands.split(","):
        if m in table:
            v, unit = table[m]
            d = {"value": "{:g}".format(round(v, 3)), "context": context, "measurand": m, "unit": unit}
            if m == "SoC":
                d["location"] = "EV"
            out.append(d)
    return out


def meter_value(s, measurands, context, when=None):
    return {"timestamp": prof.iso(when or utcnow()), "sampledValue": sampled_values(s or {}, measurands, context)}


class Transactions(OfflineQueue):
    def __init__(self, ctx, state_dir, config):
        self._open_queue(ctx, state_dir)
        self.config = config
        self.availability = None
        self._tx_file = state_dir / "transaction.json"
        self._ids_file = state_dir / "transaction_ids.json"
        self.tx = read_json(self._tx_file, {}) or {}       # local, id, id_tag, start, meter_start, begin
        self.ids = read_json(self._ids_file, {}) or {}     # local key -> CSMS transactionId
        self.remote_id_tag = None       # idTag of an accepted RemoteStartTransaction waiting for the cable
        self.remote_profile = None      # its chargingProfile (a TxProfile for that transaction)
        self.blocked_until_unplug = False
        self.ended = []                 # fn(local key) called when a transaction ends
        self.started = []               # fn(local key, remote profile) called when one starts
        self.clock = utcnow             # wall clock (clock-aligned meter values); tests set it
        self._last_meter = 0.0
        self._aligned_slot = None

    @property
    def running(self):
        """The local key of the transaction in progress, or None."""
        return self.tx.get("local")

    @property
    def transaction_id(self):
        """The CSMS's transactionId of the running transaction (None until it answered)."""
        return self.ids.get(self.tx.get("local")) if self.tx else None

    @property
    def start_time(self):
        return prof.parse_time(self.tx.get("start"))

    # ------------------------------------------------------------------ offline queue

    def _describe(self, item):
        return f"{item.get('action')} of transaction {item.get('local')}"

    def _dead_record(self, item):
        return item

    def _enqueue(self, action, payload, local=None):
        if not self.ctx.connected.is_set():
            self.ctx.count("tx_events_offline")
        self.queue.put({"action": action, "local": local, "payload": payload})
        self._kick.set()

    def _with_tx_id(self, item):
        """The payload to send, with the CSMS transactionId of its transaction filled in."""
        p = dict(item["payload"])
        local = item.get("local")
        if item["action"] == "StartTransaction" or local is None:
            return p
        tx_id = self.ids.get(local)
        if tx_id is not None:
            p["transactionId"] = tx_id
        elif item["action"] == "StopTransaction":
            raise LookupError(f"the CSMS never accepted StartTransaction of {local}: no transactionId")
        return p

    async def _deliver(self, item):
        payload = self._with_tx_id(item)
        answer = await self.ctx.cp.call_raw(item["action"], payload)
        if item["action"] == "StartTransaction":
            self.ids[item["local"]] = answer["transactionId"]
            while len(self.ids) > 1000:      # keep the newest ids (queued messages may still need them)
                self.ids.pop(next(iter(self.ids)))
            write_json_atomic(self._ids_file, self.ids)
            await self._id_tag_answer(item["local"], answer.get("idTagInfo", {}))

    async def queue_sender(self):
        """Drain the queue in order; a permanent refusal sets the message aside (kept), anything
        else keeps it and retries."""
        retry = self.queue_retry
        while True:
            await self._kicked()
            while self.ctx.connected.is_set() and self.ctx.cp is not None:
                head = self.queue.peek()
                if head is None:
                    break
                n, item = head
                try:
                    await self._deliver(item)
                    stop_if_cancelled()
                except asyncio.CancelledError:
                    raise
                except LookupError as e:
                    self._set_aside(n, item, str(e))
                    continue
                except CallRefused as e:
                    if e.code in PERMANENT_ERRORS:
                        self._set_aside(n, item, str(e))
                        retry.reset()
                        continue
                    await self._retry_later(item, f"refused: {e}")
                    continue
                except (asyncio.TimeoutError, websockets.exceptions.ConnectionClosed) as e:
                    log.info("%s: %s not delivered: %r", self.ctx.id, item["action"], e)
                    break     # stays queued; sent again after the reconnect
                except OCPPError as e:
                    self._set_aside(n, item, f"{type(e).__name__}: {e}")
                    retry.reset()
                    continue
                except Exception as e:  # noqa: BLE001 - a bug must not stop the queue for good
                    log.exception("%s: queue sender", self.ctx.id)
                    await self._retry_later(item, f"{type(e).__name__}: {e}")
                    continue
                retry.reset()
                self.queue.pop(n)
                self.ctx.count("tx_events_sent")

    # ------------------------------------------------------------------ transaction

    def _save_tx(self):
        write_json_atomic(self._tx_file, self.tx)

    def start_transaction(self, s, id_tag):
        local = "L" + uuid.uuid4().hex[:16]
        begin = meter_value(s, self.config["StopTxnSampledData"], "Transaction.Begin")
        self.tx = {"local": local, "id_tag": id_tag, "start": begin["timestamp"],
                   "meter_start": int(s.get("e_in_wh", 0)), "begin": begin}
        self._save_tx()
        self._enqueue("StartTransaction", {"connectorId": 1, "idTag": id_tag, "meterStart": self.tx["meter_start"],
                                           "timestamp": begin["timestamp"]}, local)
        profile, self.remote_profile = self.remote_profile, None
        for fn in self.started:
            fn(local, profile)

    def end_transaction(self, s, reason):
        if not self.tx.get("local"):
            return
        local, s = self.tx["local"], s or {}
        end = meter_value(s, self.config["StopTxnSampledData"], "Transaction.End")
        p = {"meterStop": int(s.get("e_in_wh", self.tx.get("meter_start", 0))), "timestamp": end["timestamp"],
             "reason": reason, "idTag": self.tx["id_tag"],
             "transactionData": [m for m in (self.tx.get("begin"), end) if m and m["sampledValue"]]}
        if not p["transactionData"]:
            del p["transactionData"]
        self._enqueue("StopTransaction", p, local)
        self.tx = {}
        self._save_tx()
        for fn in self.ended:
            r = fn(local)
            if inspect.isawaitable(r):
                asyncio.ensure_future(r)
        asyncio.ensure_future(self.availability.send_status())    # Finishing / Available now

    async def _id_tag_answer(self, local, info):
        """The CSMS refused the idTag of a transaction (StartTransaction answer): with
        StopTransactionOnInvalidId the session stops and the transaction ends DeAuthorized."""
        status = info.get("status", "Accepted")
        if status == "Accepted" or local != self.tx.get("local"):
            return
        self.ctx.event("INFO", f"idTag {self.tx.get('id_tag')} {status} by the CSMS")
        if self.config["StopTransactionOnInvalidId"]:
            try:
                await self.ctx.ctl.command("stop", {})
            except hl.LinkError as e:
                log.info("%s: stop after %s idTag: %s", self.ctx.id, status, e)
            self.end_transaction(self.ctx.ctl.sample, "DeAuthorized")
            self.blocked_until_unplug = True

    def on_sample(self, s, now_mono):
        plugged = s.get("cp") in PLUGGED
        if not plugged and self.blocked_until_unplug:
            self.blocked_until_unplug = False
            if self.availability.available:
                asyncio.ensure_future(self.availability.session_command("start", "after a remote stop"))
        if self.tx.get("local"):
            if not plugged:
                self.end_transaction(s, "EVDisconnected")
            else:
                every = self.config["MeterValueSampleInterval"]
                if every and now_mono - self._last_meter >= every:
                    self._last_meter = now_mono
                    self._enqueue("MeterValues", {"connectorId": 1, "meterValue": [
                        meter_value(s, self.config["MeterValuesSampledData"], "Sample.Periodic")]},
                        self.tx["local"])
        elif plugged and self.availability.available and not self.blocked_until_unplug:
            tag, self.remote_id_tag = self.remote_id_tag, None
            self.start_transaction(s, tag or self.config["PlugInIdTag"])
            self._last_meter = now_mono
        self._clock_aligned(s)
        asyncio.ensure_future(self.availability.send_status())

    def _clock_aligned(self, s):
        """MeterValues at every multiple of ClockAlignedDataInterval since midnight (UTC)."""
        every = self.config["ClockAlignedDataInterval"]
        if not every:
            self._aligned_slot = None
            return
        now = self.clock()
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        slot = (now.date(), math.floor((now - midnight).total_seconds() / every))
        if self._aligned_slot is not None and slot != self._aligned_slot:
            at = midnight + timedelta(seconds=slot[1] * every)   # the boundary crossed
            p = {"connectorId": 1, "meterValue": [meter_value(s, self.config["MeterValuesAlignedData"],
                                                              "Sample.Clock", at)]}
            self._enqueue("MeterValues", p, self.tx.get("local"))
        self._aligned_slot = slot

    async def meter_values_now(self):
        """A MeterValues of the moment (TriggerMessage)."""
        p = {"connectorId": 1, "meterValue": [meter_value(self.ctx.ctl.sample, self.config["MeterValuesSampledData"],
                                                          "Trigger")]}
        if self.transaction_id is not None:
            p["transactionId"] = self.transaction_id
        await self.ctx.call("MeterValues", p)

    # ------------------------------------------------------------------ remote control

    @on("RemoteStartTransaction")
    def on_remote_start_transaction(self, id_tag, connector_id=None, charging_profile=None, **_):
        if connector_id not in (None, 1) or not self.availability.available or self.tx.get("local"):
            return {"status": "Rejected"}
        if charging_profile is not None:
            if charging_profile.get("charging_profile_purpose") != "TxProfile":
                return {"status": "Rejected"}
            try:
                self.remote_profile = self.smart_charging.checked(charging_profile)
            except ValueError as e:
                self.ctx.event("V2G-400", f"RemoteStartTransaction profile rejected: {e}")
                return {"status": "Rejected"}
        self.remote_id_tag = id_tag     # a cable going in from now on starts with this idTag
        return {"status": "Accepted"}

    @after("RemoteStartTransaction")
    async def after_remote_start_transaction(self, result, id_tag, **_):
        if result.get("status") != "Accepted":
            return
        if self.config["AuthorizeRemoteTxRequests"]:
            answer = await self.ctx.call("Authorize", {"idTag": id_tag})
            status = ((answer or {}).get("idTagInfo") or {}).get("status", "Accepted") if answer else "Accepted"
            if status != "Accepted":
                self.ctx.event("INFO", f"remote start: idTag {id_tag} {status}, no transaction")
                if self.remote_id_tag == id_tag:
                    self.remote_id_tag = self.remote_profile = None
                return
        try:
            res = await self.ctx.ctl.command("start", {})
        except hl.LinkError as e:
            self.ctx.event("V2G-110", f"remote start: controller unreachable: {e}")
            return
        if not res.ok:
            self.ctx.event("INFO", f"remote start refused by the controller: {res.code}: {res.msg}")
            return
        self.blocked_until_unplug = False
        s = self.ctx.ctl.sample or {}
        if s.get("cp") in PLUGGED and not self.tx.get("local") and self.remote_id_tag == id_tag:
            self.remote_id_tag = None
            self.start_transaction(s, id_tag)

    @on("RemoteStopTransaction")
    async def on_remote_stop_transaction(self, transaction_id, **_):
        if not self.tx.get("local") or transaction_id != self.transaction_id:
            return {"status": "Rejected"}
        try:
            res = await self.ctx.ctl.command("stop", {})
        except hl.LinkError as e:
            self.ctx.event("V2G-110", f"remote stop: controller unreachable: {e}")
            return {"status": "Rejected"}
        if not res.ok:
            return {"status": "Rejected"}
        self.end_transaction(self.ctx.ctl.sample, "Remote")
        self.blocked_until_unplug = True
        return {"status": "Accepted"}
