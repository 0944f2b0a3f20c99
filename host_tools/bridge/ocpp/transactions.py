"""E Transactions (with J MeterValues and F RemoteControl's RequestStart/StopTransaction):
telemetry from the controller drives the transaction. Cable plugged -> TransactionEvent
Started, changes of charging state and periodic meter values -> Updated, cable out /
remote stop / reset -> Ended.

Every TransactionEvent goes through the disk queue first, so an outage or a restart of
the bridge loses none; those created while the CSMS was unreachable carry offline=true.
The sender drains the queue in order; a message the CSMS can never accept is set aside
in tx_queue/dead/ (kept for billing) so the ones behind it go out."""

import asyncio
import inspect
import logging
import uuid

import websockets.exceptions

from host_tools.bridge import profiles as prof
from host_tools.link import soc_pct
from host_tools.bridge.ocpp.availability import PLUGGED
from host_tools.bridge.ocpp.connection import CallRefused, OCPPError, on, snake_to_camel_case
from host_tools.bridge.ocpp.context import EVSE, status_info, utcnow
from host_tools.bridge.offline import PERMANENT_ERRORS, OfflineQueue
from host_tools.bridge.queue import read_json, write_json_atomic

log = logging.getLogger(__name__)

def charging_state(s):
    mode, cp = s.get("mode"), s.get("cp")
    if mode in ("charging", "discharging"):
        return "Charging"
    if mode == "paused" or cp == "B":
        return "SuspendedEV"
    if cp in ("C", "D"):
        return "SuspendedEVSE"
    return "EVConnected"


def meter_value(s, context="Sample.Periodic", measurands=None):
    """One MeterValueType from a controller sample (only `measurands`, when given)."""
    def sv(value, measurand, unit=None, location=None):
        d = {"value": round(value, 3), "measurand": measurand, "context": context}
        if unit:
            d["unitOfMeasure"] = {"unit": unit}
        if location:
            d["location"] = location
        return d

    ma, w = s.get("ma", 0), s.get("w", 0)
    vals = [sv(s.get("e_in_wh", 0), "Energy.Active.Import.Register", "Wh"),
            sv(s.get("e_out_wh", 0), "Energy.Active.Export.Register", "Wh"),
            sv(max(w, 0), "Power.Active.Import", "W"),
            sv(max(-w, 0), "Power.Active.Export", "W"),
            sv(max(ma, 0) / 1000, "Current.Import", "A"),
            sv(max(-ma, 0) / 1000, "Current.Export", "A"),
            sv(s.get("mv", 0) / 1000, "Voltage", "V")]
    soc = soc_pct(s)
    if soc is not None and s.get("cp") in PLUGGED:
        vals.append(sv(soc, "SoC", "Percent", "EV"))
    if measurands is not None:
        vals = [v for v in vals if v["measurand"] in measurands]
    return {"timestamp": prof.iso(utcnow()), "sampledValue": vals}


class Transactions(OfflineQueue):
    def __init__(self, ctx, state_dir, availability, meter_interval_s=60.0):
        self._open_queue(ctx, state_dir)
        self.availability = availability
        self.meter_interval_s = meter_interval_s
        self._tx_file = state_dir / "transaction.json"
        self.tx = read_json(self._tx_file, {}) or {}     # id, seq, start, remote_start_id, state
        self.remote_start_id = None
        self.remote_id_token = None     # idToken of a RequestStartTransaction waiting for the cable
        self.blocked_until_unplug = False
        self.ended = []                 # fn(tx_id) called when a transaction ends; may return an awaitable
        self._last_meter = 0.0

    @property
    def running(self):
        """The id of the transaction in progress, or None."""
        return self.tx.get("id")

    @property
    def start_time(self):
        return prof.parse_time(self.tx.get("start"))

    # ------------------------------------------------------------------ offline queue

    def _describe(self, payload):
        return "TransactionEvent {} seqNo {} of {}".format(
            payload.get("eventType"), payload.get("seqNo"), (payload.get("transactionInfo") or {}).get("transactionId"))

    def _enqueue(self, payload):
        payload = dict(payload)
        if not self.ctx.connected.is_set():
            payload["offline"] = True
            self.ctx.count("tx_events_offline")
        self.queue.put(payload)
        self._kick.set()

    def _attempts(self):
        """(MessageAttempts, MessageAttemptInterval s) for TransactionEvent (E13)."""
        dm = self.ctx.device_model
        return (int(dm.typed("OCPPCommCtrlr", "MessageAttempts", "TransactionEvent")),
                float(dm.typed("OCPPCommCtrlr", "MessageAttemptInterval", "TransactionEvent")))

    async def queue_sender(self):
        """Drain the offline queue in order. Nothing here ends the loop: a permanent refusal
        moves the message to the dead-letter directory at once; a refusal the CSMS may get
        over (or no answer on a link that stays up) is tried MessageAttempts times in all,
        MessageAttemptInterval x attempt apart (E13), then set aside too; a lost connection
        keeps it for the next session, where it counts again from one."""
        retry = self.queue_retry
        attempts = {}        # queue file number -> tries that got a refusal or no answer
        while True:
            await self._kicked()
            while self.ctx.connected.is_set():
                head = self.queue.peek()
                if head is None:
                    break
                n, payload = head
                cp = self.ctx.cp
                if cp is None:
                    break
                try:
                    await cp.call_raw("TransactionEvent", payload)
                except asyncio.CancelledError:
                    raise
                except (CallRefused, asyncio.TimeoutError) as e:
                    if isinstance(e, CallRefused) and e.code in PERMANENT_ERRORS:
                        self._set_aside(n, payload, str(e))
                        retry.reset()
                        continue
                    if isinstance(e, asyncio.TimeoutError) and (cp is not self.ctx.cp or not self.ctx.connected.is_set()):
                        break   # the session went while we waited: sent again after reconnect
                    what = str(e) if isinstance(e, CallRefused) else "no answer"
                    most, interval = self._attempts()
                    tries = attempts[n] = attempts.get(n, 0) + 1
                    if tries >= most:
                        attempts.pop(n, None)
                        self._set_aside(n, payload, f"{what}; {tries} attempts (MessageAttempts {most})")
                        continue
                    wait = interval * tries
                    self.ctx.event("V2G-400", f"TransactionEvent seqNo {payload.get('seqNo')} "
                                   f"refused ({what}); kept, attempt {tries + 1} of {most} in {wait:g} s")
                    await asyncio.sleep(wait)
                    continue
                except (websockets.exceptions.ConnectionClosed, ConnectionError) as e:
                    log.info("%s: TransactionEvent not delivered: %r", self.ctx.id, e)
                    attempts.pop(n, None)
                    break   # stays queued; sent again after reconnect
                except OCPPError as e:
                    # our payload or the CSMS's answer failed the schema: the same message
                    # would fail again, so it goes aside instead of blocking the queue
                    self._set_aside(n, payload, f"{type(e).__name__}: {e}")
                    retry.reset()
                    continue
                except Exception as e:   # noqa: BLE001 - a bug must not stop the queue for good
                    log.exception("%s: queue sender", self.ctx.id)
                    await self._retry_later(payload, f"{type(e).__name__}: {e}")
                    continue
                retry.reset()
                attempts.pop(n, None)
                self.queue.pop(n)
                self.ctx.count("tx_events_sent")

    # ------------------------------------------------------------------ transaction

    def _save_tx(self):
        write_json_atomic(self._tx_file, self.tx)

    def tx_event(self, event_type, trigger, s, meter=True, id_token=None, **info):
        """Queue a TransactionEvent of the running transaction."""
        self.tx["seq"] = self.tx.get("seq", -1) + 1
        ti = {"transactionId": self.tx["id"], **{k: v for k, v in info.items() if v is not None}}
        if "chargingState" not in ti and s is not None:
            ti["chargingState"] = charging_state(s)
        p = {"eventType": event_type, "timestamp": prof.iso(utcnow()), "triggerReason": trigger,
             "seqNo": self.tx["seq"], "transactionInfo": ti, "evse": EVSE}
        if id_token:
            p["idToken"] = id_token
        if meter and s:
            # J02: each event carries the measurands its SampledDataCtrlr variable names
            which = {"Started": "TxStartedMeasurands", "Ended": "TxEndedMeasurands"}.get(
                event_type, "TxUpdatedMeasurands")
            names = str(self.ctx.device_model.typed("SampledDataCtrlr", which) or "").split(",")
            mv = meter_value(s, "Transaction.Begin" if event_type == "Started" else
                             "Transaction.End" if event_type == "Ended" else "Sample.Periodic", names)
            if mv["sampledValue"]:
                p["meterValue"] = [mv]
        self._save_tx()
        self._enqueue(p)

    def start_transaction(self, s, trigger):
        self.tx = {"id": str(uuid.uuid4()), "seq": -1, "state": None,
                   "start": prof.iso(utcnow())}
        rs, tok = self.remote_start_id, self.remote_id_token
        self.remote_start_id = self.remote_id_token = None
        self.tx_event("Started", trigger, s, id_token=tok, remoteStartId=rs)
        self.tx["state"] = charging_state(s)
        self._save_tx()

    def end_transaction(self, s, trigger, reason):
        if not self.tx.get("id"):
            return
        tx_id = self.tx["id"]
        # the energy transfer is over whatever the last sample said: the EV is still plugged
        # (a stop or a reset) or gone (E06: Idle)
        state = "EVConnected" if (s or {}).get("cp") in PLUGGED else "Idle"
        self.tx_event("Ended", trigger, s, stoppedReason=reason, chargingState=state)
        self.tx = {}
        self._save_tx()
        for fn in self.ended:
            r = fn(tx_id)
            if inspect.isawaitable(r):
                asyncio.ensure_future(r)

    def on_sample(self, s, now_mono):
        """One telemetry sample from the controller."""
        plugged = s.get("cp") in PLUGGED
        if not plugged and self.blocked_until_unplug:
            self.blocked_until_unplug = False
            if self.availability.available:
                # a remote stop ends that session only: the next vehicle charges again
                asyncio.ensure_future(self.availability.session_command("start", "after a remote stop"))
        if self.tx.get("id"):
            if not plugged:
                self.end_transaction(s, "EVCommunicationLost", "EVDisconnected")
            else:
                st = charging_state(s)
                if st != self.tx.get("state"):
                    self.tx["state"] = st
                    self.tx_event("Updated", "ChargingStateChanged", s)
                    self._last_meter = now_mono
                elif now_mono - self._last_meter >= self.meter_interval_s:
                    self.tx_event("Updated", "MeterValuePeriodic", s)
                    self._last_meter = now_mono
        elif plugged and self.availability.available and not self.blocked_until_unplug:
            self.start_transaction(s, "RemoteStart" if self.remote_start_id is not None else "CablePluggedIn")
            self._last_meter = now_mono
        asyncio.ensure_future(self.availability.send_status())

    # ------------------------------------------------------------------ F RemoteControl

    @on("RequestStartTransaction")
    async def on_request_start_transaction(self, id_token, remote_start_id, evse_id=None, **_):
        if not self.availability.available:
            return {"status": "Rejected", "statusInfo": status_info("Unavailable", "station inoperative")}
        ctl = self.ctx.ctl
        res = await ctl.command("start", {})
        if not res.ok:
            return {"status": "Rejected", "statusInfo": status_info("ControllerRefused", res.msg)}
        out = {"status": "Accepted"}
        tok = snake_to_camel_case(id_token)    # the CSMS's idToken, sent back as given
        if self.tx.get("id"):
            out["transactionId"] = self.tx["id"]
            self.tx["remote_start_id"] = remote_start_id
            self.tx_event("Updated", "RemoteStart", ctl.sample, meter=False, id_token=tok,
                          remoteStartId=remote_start_id)
        else:
            self.remote_start_id = remote_start_id
            self.remote_id_token = tok
            self.blocked_until_unplug = False
            s = ctl.sample or {}
            if s.get("cp") in PLUGGED:
                self.start_transaction(s, "RemoteStart")
                out["transactionId"] = self.tx["id"]
        return out

    @on("RequestStopTransaction")
    async def on_request_stop_transaction(self, transaction_id, **_):
        if transaction_id != self.tx.get("id"):
            return {"status": "Rejected", "statusInfo": status_info("TxNotFound", transaction_id)}
        res = await self.ctx.ctl.command("stop", {})
        if not res.ok:
            return {"status": "Rejected", "statusInfo": status_info("ControllerRefused", res.msg)}
        self.end_transaction(self.ctx.ctl.sample, "RemoteStop", "Remote")
        self.blocked_until_unplug = True
        return {"status": "Accepted"}

    # ------------------------------------------------------------------ E14

    @on("GetTransactionStatus")
    def on_get_transaction_status(self, transaction_id=None, **_):
        """E14: are messages of this (or any) transaction still waiting to go, and is it running."""
        waiting = self.queue.items()
        if transaction_id is None:
            return {"messagesInQueue": bool(waiting)}
        mine = [m for m in waiting if (m.get("transactionInfo") or {}).get("transactionId") == transaction_id]
        return {"ongoingIndicator": self.tx.get("id") == transaction_id, "messagesInQueue": bool(mine)}
