"""The charging station as the CSMS sees it: one EVSE, one connector, one controller.

`OcppStation.run()` keeps a WebSocket to the CSMS (OCPP 2.1 offered first when
allowed, 2.0.1 otherwise), boots, sends heartbeats at the CSMS's interval and drains
the offline queue. Telemetry from the controller (`on_sample`) drives the
transaction: cable plugged -> TransactionEvent Started, changes of charging state
and periodic meter values -> Updated, cable out / remote stop / reset -> Ended.
Every TransactionEvent goes through the disk queue first, so an outage or a
restart of the bridge loses none; those created while the CSMS was unreachable
carry offline=true. CSMS requests are answered by the `on_<Action>` methods below.
"""

import asyncio
import base64
import json
import logging
import re
import ssl
import urllib.parse
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import websockets
import websockets.exceptions

from host_tools import link as hl
from host_tools.bridge import profiles as prof
from host_tools.bridge import variables as V
from host_tools.bridge.backoff import Backoff
from host_tools.bridge.ocpp_proto import VERSIONS, CallRefused, charge_point_class
from host_tools.bridge.queue import DiskQueue, read_json, write_json_atomic
from ocpp.charge_point import snake_to_camel_case
from ocpp.exceptions import OCPPError

log = logging.getLogger(__name__)

EVSE = {"id": 1, "connectorId": 1}
VENDOR = "OpenV2G"
MODEL = "V2G-Controller"
HANDSHAKE_TIMEOUT_S = 10.0
TRIGGERABLE = ("BootNotification", "Heartbeat", "StatusNotification", "MeterValues",
               "TransactionEvent", "FirmwareStatusNotification", "LogStatusNotification")
FAULT_CODES = ("V2G-010", "V2G-011", "V2G-012")
# the OCPP identity: what may appear in the CSMS URL and in file names under the state dir
STATION_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,48}$")
# CALLERROR codes that say the message itself is wrong: sending it again cannot succeed
PERMANENT_ERRORS = frozenset(("FormatViolation", "FormationViolation", "PropertyConstraintViolation",
                              "OccurrenceConstraintViolation", "OccurenceConstraintViolation",
                              "TypeConstraintViolation", "ProtocolError", "NotImplemented", "NotSupported"))
QUEUE_RETRY_MAX_S = 60.0
# errors.md has no numbered code for a lost queued message; the log names it so it can be found
QUEUE_FULL_CODE = "ERR_V2G_TX_QUEUE_FULL"
LOOP_RESTART_S = 1.0


def check_station_id(station_id):
    """Raise ValueError unless station_id is a usable OCPP identity."""
    if (not isinstance(station_id, str) or not STATION_ID_RE.match(station_id)
            or station_id in (".", "..")):
        raise ValueError(f"station id {station_id!r} is not a valid OCPP identity: 1 to 48 of "
                         "A-Z a-z 0-9 . _ : - (and not '.' or '..')")
    return station_id


def utcnow():
    return datetime.now(timezone.utc)


class Security:
    """Security profile (OCPP 2.0.1 Part 2 A00): 1 ws + Basic Auth, 2 wss + Basic Auth,
    3 wss + client certificate. 0 = no security (a local test CSMS only)."""

    def __init__(self, profile, password=None, ca_file=None, cert_file=None, key_file=None):
        self.profile = profile
        self.password = password
        self.ca_file = ca_file
        self.cert_file = cert_file
        self.key_file = key_file

    def check(self, url):
        scheme = url.split(":", 1)[0].lower()
        want = "ws" if self.profile in (0, 1) else "wss"
        if scheme != want:
            raise ValueError(f"security profile {self.profile} needs a {want}:// CSMS URL, got {scheme}://")
        if self.profile in (1, 2) and not self.password:
            raise ValueError(f"security profile {self.profile} needs the Basic Auth password "
                             "(csms_password in the config directory)")
        if self.profile == 3 and not (self.cert_file and self.key_file):
            raise ValueError("security profile 3 needs client_cert.pem and client_key.pem in the config directory")

    def headers(self, station_id):
        if self.profile in (1, 2):
            tok = base64.b64encode(f"{station_id}:{self.password}".encode()).decode()
            return {"Authorization": "Basic " + tok}
        return None

    def ssl_context(self):
        if self.profile < 2:
            return None
        ctx = ssl.create_default_context(cafile=self.ca_file)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.profile == 3:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


class OcppStation:
    def __init__(self, station_id, url, ctl, state_dir, clog, *, max_version="2.1",
                 security=None, backoff=None, meter_interval_s=60.0, response_timeout=30.0,
                 handshake_timeout_s=HANDSHAKE_TIMEOUT_S, allow_file_updates=False):
        self.id = check_station_id(station_id)
        self.url = url.rstrip("/") + "/" + urllib.parse.quote(station_id, safe="")
        self.ctl = ctl
        self.clog = clog
        self.security = security or Security(0)
        self.security.check(url)
        self.subprotocols = ["ocpp2.1", "ocpp2.0.1"] if max_version == "2.1" else ["ocpp2.0.1"]
        self.backoff = backoff or Backoff()
        self.meter_interval_s = meter_interval_s
        self.response_timeout = response_timeout
        self.handshake_timeout_s = handshake_timeout_s
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.queue = DiskQueue(self.state_dir / "tx_queue", on_drop=self._queue_dropped)
        self._tx_file = self.state_dir / "transaction.json"
        self.tx = read_json(self._tx_file, {}) or {}     # id, seq, start, remote_start_id, state
        self.cp = None
        self.version = None
        self.connected = asyncio.Event()     # boot accepted, CSMS reachable
        self._queue_kick = asyncio.Event()
        self.heartbeat_s = 60
        self.profiles = prof.ProfileStore()
        self.plan = None
        # ChangeAvailability outlives a restart of the bridge (OCPP G03.FR.07: kept persistently)
        self._avail_file = self.state_dir / "availability.json"
        self.available = (read_json(self._avail_file, {}) or {}).get("operative", True) is not False
        self._pending_inoperative = False
        self.blocked_until_unplug = False
        self.remote_start_id = None
        self.remote_id_token = None     # idToken of a RequestStartTransaction waiting for the cable
        self.connector_status = None
        self.boot_reason = "PowerUp"
        self._reconnect = asyncio.Event()
        self._last_meter = 0.0
        self.counters = {"tx_events_sent": 0, "tx_events_offline": 0, "connects": 0}
        self.firmware_status = "Idle"
        self._firmware_busy = False
        self.allow_file_updates = allow_file_updates
        self._reset_on_idle = False
        self.dead_letter = self.state_dir / "tx_queue" / "dead"
        self._tasks = {}
        self._stopping = False
        self.queue_retry = Backoff(1.0, 0.0, 6)    # waits after a transient refusal (capped at 60 s)

    # ------------------------------------------------------------------ connection

    def _supervise(self):
        """(Re)start the background loops; one that ended for any reason is logged and restarted."""
        for name, fn in (("queue sender", self._queue_sender), ("profile ticker", self._profile_ticker)):
            t = self._tasks.get(name)
            if t is not None and not t.done():
                continue
            if t is not None:
                why = "ended" if t.cancelled() or t.exception() is None else repr(t.exception())
                self.clog.event(self.id, "V2G-400", f"{name} stopped ({why}), restarted")
            t = self._tasks[name] = asyncio.ensure_future(fn())
            t.add_done_callback(self._loop_ended)
        if len(self.queue):
            self._queue_kick.set()   # a restarted sender looks at the queue at once

    def _loop_ended(self, task):
        if self._stopping or task.cancelled():
            return
        asyncio.get_running_loop().call_later(LOOP_RESTART_S, self._supervise)

    async def _stop_tasks(self):
        self._stopping = True
        tasks = [t for t in self._tasks.values() if not t.done()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    async def run(self):
        self._supervise()
        try:
            while True:
                try:
                    await self._session()
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    log.info("%s: CSMS session ended: %s", self.id, e)
                self.connected.clear()
                self.cp = None
                self._supervise()
                if self._reconnect.is_set():
                    self._reconnect.clear()
                    continue
                wait = self.backoff.next()
                self.clog.event(self.id, "INFO", f"CSMS unreachable, retrying in {wait:.1f} s")
                await asyncio.sleep(wait)
        finally:
            await self._stop_tasks()

    async def _session(self):
        try:
            ws = await websockets.connect(
                self.url, subprotocols=self.subprotocols,
                additional_headers=self.security.headers(self.id),
                ssl=self.security.ssl_context(), open_timeout=self.handshake_timeout_s,
                ping_interval=None, max_size=2 ** 20)
        except asyncio.TimeoutError:
            self.clog.event(self.id, "V2G-140", "ERR_V2G_HANDSHAKE_TIMEOUT: CSMS {} did not complete the "
                            "WebSocket handshake within {:g} s".format(self.url, self.handshake_timeout_s))
            raise
        except (OSError, websockets.exceptions.WebSocketException) as e:
            self.clog.event(self.id, "INFO", f"CSMS {self.url} connection failed: {e}")
            raise
        async with ws:
            self.version = VERSIONS.get(ws.subprotocol)
            if self.version is None:
                self.clog.event(self.id, "V2G-400", f"CSMS accepted no OCPP version we offer "
                                f"({', '.join(self.subprotocols)})")
                raise ConnectionError("no common OCPP version")
            self.counters["connects"] += 1
            cp = charge_point_class(self.version)(self.id, ws, response_timeout=self.response_timeout)
            cp.handler = self
            self.cp = cp
            reader = asyncio.ensure_future(cp.start())
            try:
                await self._boot()
                self.backoff.reset()
                self.clog.event(self.id, "INFO", f"connected to {self.url} with OCPP {self.version}, "
                                f"heartbeat {self.heartbeat_s} s")
                self.connected.set()
                await self._send_status(force=True)
                self._queue_kick.set()
                self._supervise()
                hb = asyncio.ensure_future(self._heartbeats())
                rc = asyncio.ensure_future(self._reconnect.wait())
                try:
                    done, _ = await asyncio.wait([reader, rc], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for t in (hb, rc):
                        t.cancel()
                    await asyncio.gather(hb, rc, return_exceptions=True)
                if reader in done and reader.exception():
                    raise reader.exception()
            finally:
                self.connected.clear()
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)

    async def _boot(self):
        await self.ctl.wait_ready(10.0)   # the BootNotification carries the controller's firmware version
        while True:
            sample = self.ctl.sample or {}
            payload = {"reason": self.boot_reason, "chargingStation": {
                "model": MODEL, "vendorName": VENDOR,
                "firmwareVersion": self.ctl.fw or "unknown",
                "serialNumber": self.ctl.serial or self.id}}
            res = await self.cp.call_raw("BootNotification", payload)
            self.heartbeat_s = max(1, int(res.get("interval") or 60))
            if res["status"] == "Accepted":
                self.boot_reason = "PowerUp"
                return
            log.info("%s: boot %s, retry in %s s (sample %s)", self.id, res["status"], self.heartbeat_s,
                     sample.get("t_ms"))
            await asyncio.sleep(self.heartbeat_s)

    async def _heartbeats(self):
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                await self.cp.call_raw("Heartbeat", {})
            except (asyncio.TimeoutError, CallRefused) as e:
                log.info("%s: heartbeat unanswered: %s", self.id, e)
            except asyncio.CancelledError:
                raise
            except websockets.exceptions.ConnectionClosed:
                return   # the session ends on its own; the next one starts new heartbeats
            except OCPPError as e:   # the CSMS's answer failed the schema: keep beating
                self.clog.event(self.id, "V2G-400", f"Heartbeat answer refused: {type(e).__name__}: {e}")
            except Exception as e:   # noqa: BLE001 - a bug must not stop the heartbeats
                log.exception("%s: heartbeat failed", self.id)
                self.clog.event(self.id, "V2G-400", f"Heartbeat failed: {type(e).__name__}: {e}")

    def reconnect(self, reason="RemoteReset"):
        self.boot_reason = reason
        self._reconnect.set()

    async def _call(self, action, payload):
        """A CALL when connected; returns the answer or None (logged) otherwise."""
        cp = self.cp
        if cp is None or not self.connected.is_set():
            return None
        try:
            return await cp.call_raw(action, payload)
        except (asyncio.TimeoutError, CallRefused, websockets.exceptions.ConnectionClosed) as e:
            log.info("%s: %s not delivered: %s", self.id, action, e)
            return None

    # ------------------------------------------------------------------ offline queue

    def _enqueue(self, payload):
        payload = dict(payload)
        if not self.connected.is_set():
            payload["offline"] = True
            self.counters["tx_events_offline"] += 1
        self.queue.put(payload)
        self._queue_kick.set()

    def _queue_dropped(self, n, payload):
        """The offline queue was full and its oldest TransactionEvent went: billing data is
        lost, so this is an error line (and a counter in the diagnostic report)."""
        self.counters["tx_events_dropped"] = self.counters.get("tx_events_dropped", 0) + 1
        p = payload or {}
        what = "unreadable message" if payload is None else "TransactionEvent {} seqNo {} of {}".format(
            p.get("eventType"), p.get("seqNo"), (p.get("transactionInfo") or {}).get("transactionId"))
        self.clog.event(self.id, QUEUE_FULL_CODE, f"offline queue full ({self.queue.max_items} messages): "
                        f"oldest dropped: {what} (queue file {n:012d}); "
                        f"{self.counters['tx_events_dropped']} dropped so far")

    def _dead_letter(self, n, payload, why):
        """Set a message the CSMS can never accept aside in tx_queue/dead/ (kept for billing,
        never deleted) so the messages behind it go out."""
        self.dead_letter.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.dead_letter / "{:012d}.json".format(n), {"reason": why, "payload": payload})
        self.queue.pop(n)
        self.counters["tx_events_dead"] = self.counters.get("tx_events_dead", 0) + 1
        self.clog.event(self.id, "V2G-400", f"TransactionEvent seqNo {payload.get('seqNo')} refused by the "
                        f"CSMS ({why}): moved to {self.dead_letter.name}/{n:012d}.json")

    async def _queue_sender(self):
        """Drain the offline queue in order. Nothing here ends the loop: a permanent refusal
        moves the message to the dead-letter directory, anything else keeps it and retries."""
        retry = self.queue_retry
        while True:
            await self._queue_kick.wait()
            self._queue_kick.clear()
            while self.connected.is_set():
                head = self.queue.peek()
                if head is None:
                    break
                n, payload = head
                cp = self.cp
                if cp is None:
                    break
                try:
                    await cp.call_raw("TransactionEvent", payload)
                except asyncio.CancelledError:
                    raise
                except CallRefused as e:
                    if e.code in PERMANENT_ERRORS:
                        self._dead_letter(n, payload, str(e))
                        retry.reset()
                        continue
                    wait = min(retry.next(), QUEUE_RETRY_MAX_S)
                    self.clog.event(self.id, "V2G-400", f"TransactionEvent seqNo {payload.get('seqNo')} "
                                    f"refused ({e}); kept, retry in {wait:g} s")
                    await asyncio.sleep(wait)
                    continue
                except (asyncio.TimeoutError, websockets.exceptions.ConnectionClosed) as e:
                    log.info("%s: TransactionEvent not delivered: %r", self.id, e)
                    break   # stays queued; sent again after reconnect
                except OCPPError as e:
                    # our payload or the CSMS's answer failed the schema: the same message
                    # would fail again, so it goes aside instead of blocking the queue
                    self._dead_letter(n, payload, f"{type(e).__name__}: {e}")
                    retry.reset()
                    continue
                except Exception as e:   # noqa: BLE001 - a bug must not stop the queue for good
                    log.exception("%s: queue sender", self.id)
                    wait = min(retry.next(), QUEUE_RETRY_MAX_S)
                    self.clog.event(self.id, "V2G-400", f"TransactionEvent seqNo {payload.get('seqNo')} "
                                    f"not sent ({type(e).__name__}: {e}); kept, retry in {wait:g} s")
                    await asyncio.sleep(wait)
                    continue
                retry.reset()
                self.queue.pop(n)
                self.counters["tx_events_sent"] += 1

    # ------------------------------------------------------------------ transaction

    def _save_tx(self):
        write_json_atomic(self._tx_file, self.tx)

    def _meter_value(self, s, context="Sample.Periodic"):
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
        if s.get("soc_pm", -1) >= 0 and s.get("cp") in ("B", "C", "D"):
            vals.append(sv(s["soc_pm"] / 10, "SoC", "Percent", "EV"))
        return {"timestamp": prof.iso(utcnow()), "sampledValue": vals}

    @staticmethod
    def charging_state(s):
        mode, cp = s.get("mode"), s.get("cp")
        if mode in ("charging", "discharging"):
            return "Charging"
        if mode == "paused" or cp == "B":
            return "SuspendedEV"
        if cp in ("C", "D"):
            return "SuspendedEVSE"
        return "EVConnected"

    def _tx_event(self, event_type, trigger, s, meter=True, id_token=None, **info):
        self.tx["seq"] = self.tx.get("seq", -1) + 1
        ti = {"transactionId": self.tx["id"], **{k: v for k, v in info.items() if v is not None}}
        if "chargingState" not in ti and s is not None:
            ti["chargingState"] = self.charging_state(s)
        p = {"eventType": event_type, "timestamp": prof.iso(utcnow()), "triggerReason": trigger,
             "seqNo": self.tx["seq"], "transactionInfo": ti, "evse": EVSE}
        if id_token:
            p["idToken"] = id_token
        if meter and s:
            p["meterValue"] = [self._meter_value(s, "Transaction.Begin" if event_type == "Started" else
                                                 "Transaction.End" if event_type == "Ended" else
                                                 "Sample.Periodic")]
        self._save_tx()
        self._enqueue(p)

    def start_transaction(self, s, trigger):
        self.tx = {"id": str(uuid.uuid4()), "seq": -1, "state": None,
                   "start": prof.iso(utcnow())}
        rs, tok = self.remote_start_id, self.remote_id_token
        self.remote_start_id = self.remote_id_token = None
        self._tx_event("Started", trigger, s, id_token=tok, remoteStartId=rs)
        self.tx["state"] = self.charging_state(s)
        self._save_tx()

    def end_transaction(self, s, trigger, reason):
        if not self.tx.get("id"):
            return
        self._tx_event("Ended", trigger, s, stoppedReason=reason)
        self.profiles.end_transaction(self.tx["id"])
        self.tx = {}
        self._save_tx()
        if self._pending_inoperative:
            self._pending_inoperative = False
            self.available = False    # at once: the reset below must not start the session again
            asyncio.ensure_future(self._set_available(False))
        if self._reset_on_idle:
            self._reset_on_idle = False
            asyncio.ensure_future(self.after_Reset({"status": "Accepted"}, "OnIdle"))

    def on_sample(self, s, now_mono):
        """One telemetry sample from the controller (the service calls this for each)."""
        cp = s.get("cp")
        plugged = cp in ("B", "C", "D")
        if not plugged and self.blocked_until_unplug:
            self.blocked_until_unplug = False
            if self.available:
                # a remote stop ends that session only: the next vehicle charges again
                asyncio.ensure_future(self._resume_session())
        if self.tx.get("id"):
            if not plugged:
                self.end_transaction(s, "EVCommunicationLost", "EVDisconnected")
            else:
                st = self.charging_state(s)
                if st != self.tx.get("state"):
                    self.tx["state"] = st
                    self._tx_event("Updated", "ChargingStateChanged", s)
                    self._last_meter = now_mono
                elif now_mono - self._last_meter >= self.meter_interval_s:
                    self._tx_event("Updated", "MeterValuePeriodic", s)
                    self._last_meter = now_mono
        elif plugged and self.available and not self.blocked_until_unplug:
            self.start_transaction(s, "RemoteStart" if self.remote_start_id is not None else "CablePluggedIn")
            self._last_meter = now_mono
        asyncio.ensure_future(self._send_status())

    def current_status(self):
        s = self.ctl.sample or {}
        if not self.available:
            return "Unavailable"
        if s.get("mode") == "fault" or any(c in FAULT_CODES for c in s.get("errors", ())):
            return "Faulted"
        if s.get("cp") in ("B", "C", "D"):
            return "Occupied"
        return "Available"

    async def _send_status(self, force=False):
        st = self.current_status()
        if st == self.connector_status and not force:
            return
        self.connector_status = st
        await self._call("StatusNotification", {"timestamp": prof.iso(utcnow()), "connectorStatus": st,
                                                "evseId": 1, "connectorId": 1})

    # ------------------------------------------------------------------ charging profiles

    async def _profile_ticker(self):
        while True:
            await asyncio.sleep(1.0)
            if self.profiles.profiles or self.plan is not None:
                try:
                    await self.apply_profiles()
                except asyncio.CancelledError:
                    raise
                except Exception as e:   # noqa: BLE001 - the ticker must outlive a bad plan or link
                    log.exception("%s: profile ticker", self.id)
                    self.clog.event(self.id, "V2G-400", f"charging profile not applied: {type(e).__name__}: {e}")

    async def apply_profiles(self, store=None):
        """Tell the controller the limits of `store` (default: the profiles in force) and, once
        it took them, make `store` the profiles in force. (ok, message)."""
        store = self.profiles if store is None else store
        tx, mx = store.composite(utcnow(), self.tx.get("id"), prof.parse_time(self.tx.get("start")))
        new = prof.plan(tx, mx, self.version or "2.0.1", self.ctl.volts, self.ctl.phases) \
            if (tx or mx) else None
        if new == self.plan:
            self.profiles = store
            return True, "unchanged"
        ok, msg = await self.ctl.apply_csms_plan(new)
        if ok:
            self.plan = new
            self.profiles = store
        return ok, msg

    # ------------------------------------------------------------------ CSMS requests

    def _status_info(self, reason, info=None):
        d = {"reasonCode": reason}
        if info:
            d["additionalInfo"] = str(info)[:512]
        return d

    async def on_SetChargingProfile(self, evse_id, charging_profile, **_):
        if evse_id not in (0, 1):
            return {"status": "Rejected", "statusInfo": self._status_info("UnknownEvse", f"no EVSE {evse_id}")}
        purpose = charging_profile.get("charging_profile_purpose")
        if purpose == "TxProfile" and not self.tx.get("id"):
            return {"status": "Rejected", "statusInfo": self._status_info("TxNotFound", "no transaction running")}
        if purpose == "ChargingStationMaxProfile" and evse_id != 0:
            return {"status": "Rejected", "statusInfo": self._status_info(
                "InvalidProfile", "ChargingStationMaxProfile needs evseId 0")}
        try:
            # parsed and checked in full before anything changes: a bad profile is never stored
            store = self.profiles.with_profile(charging_profile, utcnow(), self.version or "2.0.1")
        except prof.ProfileError as e:
            self.clog.event(self.id, "V2G-400", f"charging profile {charging_profile.get('id')} rejected: {e}")
            return {"status": "Rejected", "statusInfo": self._status_info(e.reason, e)}
        if purpose == "TxProfile" and store.profiles[charging_profile["id"]][0].get("transaction_id") \
                not in (None, self.tx.get("id")):
            return {"status": "Rejected", "statusInfo": self._status_info(
                "TxNotFound", f"transactionId {charging_profile.get('transaction_id')} is not the running one")}
        try:
            ok, msg = await self.apply_profiles(store)
        except hl.LinkError as e:
            ok, msg = False, str(e)
        if not ok:
            self.clog.event(self.id, "V2G-400", f"charging profile {charging_profile.get('id')} refused "
                            f"by the controller: {msg}")
            return {"status": "Rejected", "statusInfo": self._status_info("InvalidValue", msg)}
        return {"status": "Accepted"}

    async def on_ClearChargingProfile(self, charging_profile_id=None, charging_profile_criteria=None, **_):
        c = charging_profile_criteria or {}
        store, n = self.profiles.without(charging_profile_id, c.get("charging_profile_purpose"),
                                         c.get("stack_level"))
        if n:
            # the CSMS's profiles are gone whatever the controller says now: the store changes at
            # once and the profile ticker sends the limits again until the controller has them
            self.profiles = store
            try:
                ok, msg = await self.apply_profiles(store)
            except hl.LinkError as e:
                ok, msg = False, str(e)
            if not ok:
                self.clog.event(self.id, "V2G-400", f"limits after ClearChargingProfile not applied yet: {msg}")
        return {"status": "Accepted" if n else "Unknown"}

    def on_GetCompositeSchedule(self, duration, evse_id, charging_rate_unit=None, **_):
        if evse_id not in (0, 1):
            return {"status": "Rejected", "statusInfo": self._status_info("UnknownEvse", f"no EVSE {evse_id}")}
        unit = charging_rate_unit or "A"
        now = utcnow()
        end = now + timedelta(seconds=duration)
        tx_start = prof.parse_time(self.tx.get("start"))
        periods = []
        for t in [now] + self.profiles.change_points(now, end, tx_start):
            tx, mx = self.profiles.composite(t, self.tx.get("id"), tx_start)
            p = self._composite_period(tx, mx, unit)
            p["startPeriod"] = int((t - now).total_seconds())
            if not periods or {k: v for k, v in periods[-1].items() if k != "startPeriod"} != \
                    {k: v for k, v in p.items() if k != "startPeriod"}:
                periods.append(p)
        sched = {"evseId": evse_id, "duration": duration, "scheduleStart": prof.iso(now),
                 "chargingRateUnit": unit, "chargingSchedulePeriod": periods}
        return {"status": "Accepted", "schedule": sched}

    def _composite_period(self, tx, mx, unit):
        """One composite period in `unit`. Keeps the 2.1 fields (operationMode, setpoint,
        dischargeLimit and their per-phase values) of the profile in force."""
        volts, phases = self.ctl.volts, self.ctl.phases

        def conv(v, from_unit, n):
            if v is None or from_unit == unit:
                return v
            f = volts * n
            return round(v / f, 1) if unit == "A" else round(v * f, 1)

        out = {}
        if tx is not None:
            period, u = tx
            n = period.get("number_phases") or phases
            for key, camel in (("limit", "limit"), ("limit_l2", "limitL2"), ("limit_l3", "limitL3"),
                               ("setpoint", "setpoint"), ("setpoint_l2", "setpointL2"),
                               ("setpoint_l3", "setpointL3"), ("discharge_limit", "dischargeLimit"),
                               ("discharge_limit_l2", "dischargeLimitL2"),
                               ("discharge_limit_l3", "dischargeLimitL3")):
                if period.get(key) is not None and (self.version == "2.1" or key == "limit"):
                    base = key.rsplit("_l", 1)[0] if key.endswith(("_l2", "_l3")) else key
                    # with L2/L3 values, each value (L1 included) is one phase's, not the sum
                    out[camel] = conv(period[key], u, 1 if prof.per_phase(period, base) else n)
            if self.version == "2.1" and period.get("operation_mode"):
                out["operationMode"] = period["operation_mode"]
            if period.get("number_phases"):
                out["numberPhases"] = period["number_phases"]
        if mx is not None:
            period, u = mx
            cap = conv(period.get("limit"), u, 1 if prof.per_phase(period, "limit")
                       else (period.get("number_phases") or phases))
            if cap is not None and (out.get("limit") is None or out["limit"] > cap):
                out["limit"] = cap
        if "limit" not in out and self.version == "2.0.1":
            out["limit"] = conv(self.ctl.max_charge_a, "A", phases)
        return out

    async def on_RequestStartTransaction(self, id_token, remote_start_id, evse_id=None, **_):
        if not self.available:
            return {"status": "Rejected", "statusInfo": self._status_info("Unavailable", "station inoperative")}
        res = await self.ctl.command("start", {})
        if not res.ok:
            return {"status": "Rejected", "statusInfo": self._status_info("ControllerRefused", res.msg)}
        out = {"status": "Accepted"}
        tok = snake_to_camel_case(id_token)    # the CSMS's idToken, sent back as given
        if self.tx.get("id"):
            out["transactionId"] = self.tx["id"]
            self.tx["remote_start_id"] = remote_start_id
            self._tx_event("Updated", "RemoteStart", self.ctl.sample, meter=False, id_token=tok,
                           remoteStartId=remote_start_id)
        else:
            self.remote_start_id = remote_start_id
            self.remote_id_token = tok
            self.blocked_until_unplug = False
            s = self.ctl.sample or {}
            if s.get("cp") in ("B", "C", "D"):
                self.start_transaction(s, "RemoteStart")
                out["transactionId"] = self.tx["id"]
        return out

    async def on_RequestStopTransaction(self, transaction_id, **_):
        if transaction_id != self.tx.get("id"):
            return {"status": "Rejected", "statusInfo": self._status_info("TxNotFound", transaction_id)}
        res = await self.ctl.command("stop", {})
        if not res.ok:
            return {"status": "Rejected", "statusInfo": self._status_info("ControllerRefused", res.msg)}
        self.end_transaction(self.ctl.sample, "RemoteStop", "Remote")
        self.blocked_until_unplug = True
        return {"status": "Accepted"}

    def on_Reset(self, type, evse_id=None, **_):  # noqa: A002 - the payload's name
        if evse_id not in (None, 0, 1):
            return {"status": "Rejected", "statusInfo": self._status_info("UnknownEvse", f"no EVSE {evse_id}")}
        if type == "OnIdle" and self.tx.get("id"):
            self._reset_on_idle = True
            return {"status": "Scheduled"}
        return {"status": "Accepted"}

    async def after_Reset(self, result, type, **_):  # noqa: A002
        if result.get("status") != "Accepted":
            return
        self.clog.event(self.id, "INFO", f"Reset ({type}) asked by the CSMS: session stopped, reconnecting")
        try:
            await self.ctl.command("stop", {})
        except hl.LinkError as e:
            log.warning("%s: stop before reset failed: %s", self.id, e)
        self.end_transaction(self.ctl.sample, "ResetCommand", "ImmediateReset")
        await asyncio.sleep(0.2)   # let the Ended event leave before the socket closes
        self.reconnect("RemoteReset")
        if not self.available or self._pending_inoperative:
            return    # an inoperative station stays stopped through a reset
        try:
            await self.ctl.command("start", {})
        except hl.LinkError as e:
            log.warning("%s: start after reset failed: %s", self.id, e)

    async def on_ChangeAvailability(self, operational_status, evse=None, **_):
        if evse and evse.get("id") not in (0, 1):
            return {"status": "Rejected", "statusInfo": self._status_info("UnknownEvse", str(evse))}
        want = operational_status == "Operative"
        if want:
            self._pending_inoperative = False   # a later Operative cancels a scheduled Inoperative
        if not want and self.tx.get("id"):
            self._pending_inoperative = True
            return {"status": "Scheduled"}
        ok = await self._set_available(want)
        return {"status": "Accepted" if ok else "Rejected"}

    async def _set_available(self, want):
        try:
            res = await self.ctl.command("start" if want else "stop", {})
        except hl.LinkError as e:
            log.warning("%s: availability not applied: %s", self.id, e)
            return False
        if res.ok:
            self.available = want
            write_json_atomic(self._avail_file, {"operative": want})
            self.clog.event(self.id, "INFO", "station {} (ChangeAvailability): controller says: {}".format(
                "operative" if want else "inoperative", res.msg))
            await self._send_status()
        return res.ok

    async def _session_command(self, op, why):
        """start or stop on the controller; a refusal goes to central_system.log, a lost link is a warning."""
        try:
            res = await self.ctl.command(op, {})
        except hl.LinkError as e:
            log.warning("%s: %s (%s) failed: %s", self.id, op, why, e)
            return
        if not res.ok:
            self.clog.event(self.id, res.code or "V2G-400", f"{op} ({why}) refused: {res.msg}")

    async def _resume_session(self):
        await self._session_command("start", "after a remote stop")

    async def controller_up(self):
        """The controller (re)connected: an inoperative station keeps its session stopped,
        whatever the controller was doing before (a new board, a reflash)."""
        if not self.available:
            await self._session_command("stop", "the station is inoperative")

    def on_TriggerMessage(self, requested_message, evse=None, **_):
        if requested_message not in TRIGGERABLE:
            return {"status": "NotImplemented"}
        if requested_message == "TransactionEvent" and not self.tx.get("id"):
            return {"status": "Rejected", "statusInfo": self._status_info("TxNotFound")}
        return {"status": "Accepted"}

    def firmware_changed(self, version):
        """The controller came back with other firmware (an update): tell the CSMS with a
        BootNotification of reason FirmwareUpdate, as a station does after installing."""
        if not self.connected.is_set():
            self.boot_reason = "FirmwareUpdate"   # sent with the next connection's boot
            return
        asyncio.get_running_loop().create_task(self._call("BootNotification", {
            "reason": "FirmwareUpdate", "chargingStation": {
                "model": MODEL, "vendorName": VENDOR, "firmwareVersion": version,
                "serialNumber": self.ctl.serial or self.id}}))

    async def after_TriggerMessage(self, result, requested_message, **_):
        if result.get("status") != "Accepted":
            return
        s = self.ctl.sample or {}
        if requested_message == "BootNotification":
            await self._call("BootNotification", {"reason": "Triggered", "chargingStation": {
                "model": MODEL, "vendorName": VENDOR, "firmwareVersion": self.ctl.fw or "unknown"}})
        elif requested_message == "Heartbeat":
            await self._call("Heartbeat", {})
        elif requested_message == "StatusNotification":
            await self._send_status(force=True)
        elif requested_message == "MeterValues":
            await self._call("MeterValues", {"evseId": 1, "meterValue": [self._meter_value(s, "Trigger")]})
        elif requested_message == "TransactionEvent":
            self._tx_event("Updated", "Trigger", s)
        elif requested_message == "FirmwareStatusNotification":
            await self._call("FirmwareStatusNotification", {"status": self.firmware_status})
        elif requested_message == "LogStatusNotification":
            await self._call("LogStatusNotification", {"status": "Idle"})

    # -- device model

    def _readonly_vars(self):
        return {("OCPPCommCtrlr", "HeartbeatInterval"): self.heartbeat_s,
                ("SampledDataCtrlr", "TxUpdatedInterval"): int(self.meter_interval_s),
                ("ChargingStation", "Model"): MODEL,
                ("ChargingStation", "VendorName"): VENDOR,
                ("ChargingStation", "FirmwareVersion"): self.ctl.fw or "unknown",
                ("ChargingStation", "AvailabilityState"): self.current_status()}

    def on_GetBaseReport(self, request_id, report_base, **_):
        return {"status": "Accepted"}

    async def after_GetBaseReport(self, result, request_id, report_base, **_):
        values = {}
        if report_base != "SummaryInventory":
            try:
                res = await self.ctl.command("config_get", {})
                values = res.data.get("values", {}) if res.ok else {}
            except hl.LinkError as e:
                log.warning("%s: config_get for the report failed: %s", self.id, e)
        entries = V.report_entries(values, self._readonly_vars())
        chunk = 20
        for i in range(0, len(entries), chunk):
            await self._call("NotifyReport", {
                "requestId": request_id, "generatedAt": prof.iso(utcnow()), "seqNo": i // chunk,
                "tbc": i + chunk < len(entries), "reportData": entries[i:i + chunk]})

    async def on_GetVariables(self, get_variable_data, **_):
        values = None
        out = []
        for item in get_variable_data:
            comp, var = item["component"], item["variable"]
            r = {"component": {"name": comp["name"]}, "variable": {"name": var["name"]}}
            atype = item.get("attribute_type", "Actual")
            if atype != "Actual":
                out.append({**r, "attributeStatus": "NotSupportedAttributeType", "attributeType": atype})
                continue
            ro = self._readonly_vars()
            if comp["name"] == V.COMPONENT:
                if values is None:
                    res = await self.ctl.command("config_get", {})
                    values = res.data.get("values", {}) if res.ok else {}
                if var["name"] in values:
                    out.append({**r, "attributeStatus": "Accepted",
                                "attributeValue": V.to_text(values[var["name"]])})
                else:
                    out.append({**r, "attributeStatus": "UnknownVariable"})
            elif (comp["name"], var["name"]) in ro:
                out.append({**r, "attributeStatus": "Accepted",
                            "attributeValue": V.to_text(ro[(comp["name"], var["name"])])})
            elif any(c == comp["name"] for c, _ in ro):
                out.append({**r, "attributeStatus": "UnknownVariable"})
            else:
                out.append({**r, "attributeStatus": "UnknownComponent"})
        return {"getVariableResult": out}

    async def on_SetVariables(self, set_variable_data, **_):
        res = await self.ctl.command("config_get", {})
        values = res.data.get("values", {}) if res.ok else {}
        out = []
        for item in set_variable_data:
            comp, var = item["component"], item["variable"]
            r = {"component": {"name": comp["name"]}, "variable": {"name": var["name"]},
                 "attributeType": item.get("attribute_type", "Actual")}
            if comp["name"] != V.COMPONENT:
                known = any(c == comp["name"] for c, _ in self._readonly_vars())
                status = "Rejected" if known else "UnknownComponent"
                out.append({**r, "attributeStatus": status, **(
                    {"attributeStatusInfo": self._status_info("ReadOnly")} if known else {})})
                continue
            if var["name"] not in values:
                out.append({**r, "attributeStatus": "UnknownVariable"})
                continue
            if r["attributeType"] != "Actual":
                out.append({**r, "attributeStatus": "NotSupportedAttributeType"})
                continue
            try:
                v = V.from_text(item["attribute_value"], values[var["name"]])
            except ValueError as e:
                out.append({**r, "attributeStatus": "Rejected",
                            "attributeStatusInfo": self._status_info("InvalidValue", e)})
                self.clog.event(self.id, "V2G-400", f"SetVariables {var['name']}: {e}")
                continue
            cres = await self.ctl.command("config_set", {var["name"]: v})
            if cres.ok:
                values[var["name"]] = v
                out.append({**r, "attributeStatus": "Accepted"})
            else:
                self.clog.event(self.id, cres.code or "V2G-400", f"SetVariables {var['name']}={v!r} refused: "
                                f"{cres.msg}")
                out.append({**r, "attributeStatus": "Rejected",
                            "attributeStatusInfo": self._status_info("InvalidValue", cres.msg)})
        return {"setVariableResult": out}

    def on_DataTransfer(self, vendor_id, **_):
        return {"status": "Rejected", "statusInfo": self._status_info(
            "NoVendorExtensions", f"this station implements no DataTransfer extensions (vendorId {vendor_id})")}

    # -- logs and firmware

    def on_GetLog(self, log, log_type, request_id, **_):  # noqa: A002
        if log_type != "DiagnosticsLog":
            return {"status": "Rejected", "statusInfo": self._status_info("UnsupportedLogType", log_type)}
        scheme = str(log.get("remote_location", "")).split(":", 1)[0].lower()
        allowed = ("https",) if self.security.profile >= 2 else ("http", "https")
        if scheme not in allowed:
            why = (f"remoteLocation {scheme}:// refused: security profile {self.security.profile} "
                   f"uploads over {' or '.join(allowed)} only")
            self.clog.event(self.id, "V2G-400", f"GetLog {request_id}: {why}")
            return {"status": "Rejected", "statusInfo": self._status_info("InvalidURL", why)}
        return {"status": "Accepted", "filename": f"{self.id}-diagnostics-{request_id}.json"}

    async def after_GetLog(self, result, log, log_type, request_id, **_):  # noqa: A002
        if result.get("status") != "Accepted":
            return
        await self._call("LogStatusNotification", {"status": "Uploading", "requestId": request_id})
        try:
            report = await self.ctl.diagnostic_report()
            report["bridge"] = {"station_id": self.id, "ocpp": self.version, "counters": self.counters,
                                "queued": len(self.queue), "transaction": self.tx}
            body = json.dumps(report, indent=1, default=str).encode()
            url = log["remote_location"].rstrip("/") + "/" + result["filename"]
            await asyncio.get_running_loop().run_in_executor(None, _http_put, url, body)
            status = "Uploaded"
            self.clog.event(self.id, "INFO", f"diagnostic report ({len(body)} bytes) uploaded to {url}")
        except Exception as e:   # any failure is reported to the CSMS, not raised
            status = "UploadFailure"
            self.clog.event(self.id, "INFO", f"diagnostic report upload failed: {e}")
        await self._call("LogStatusNotification", {"status": status, "requestId": request_id})

    def on_UpdateFirmware(self, request_id, firmware, **_):
        fota = self.ctl.fota
        if fota is None:
            return {"status": "Rejected", "statusInfo": self._status_info(
                "NotSupported", "signed updates are not available on this gateway yet")}
        if self._firmware_busy:
            # OCPP 2.0.1 L01.FR.24: an update in progress that cannot be cancelled -> Rejected
            # (a push to the controller cannot be stopped half way)
            return {"status": "Rejected", "statusInfo": self._status_info(
                "InProgress", f"an update is already in progress (status {self.firmware_status})")}
        if getattr(self.ctl, "local_update_running", lambda: False)():
            # a local `v2g fota` through the bridge's local link: two pushes would undo each other
            return {"status": "Rejected", "statusInfo": self._status_info(
                "InProgress", "a local update (v2g fota through the local link) is being pushed")}
        location = str(firmware.get("location", ""))
        scheme = location.split(":", 1)[0].lower() if ":" in location else ""
        allowed = ("http", "https", "file") if self.allow_file_updates else ("http", "https")
        if scheme not in allowed:
            why = (f"firmware location {scheme or location!r}:// is not allowed ({', '.join(allowed)}"
                   f"{'' if self.allow_file_updates else '; file:// needs --allow-file-updates'})")
            self.clog.event(self.id, "V2G-400", f"UpdateFirmware {request_id}: {why}")
            return {"status": "Rejected", "statusInfo": self._status_info("InvalidURL", why)}
        self._firmware_busy = True    # set here: a second request may arrive before after_ runs
        return {"status": "Accepted"}

    async def after_UpdateFirmware(self, result, request_id, firmware, **_):
        if result.get("status") != "Accepted":
            return

        async def report(status):
            self.firmware_status = status
            await self._call("FirmwareStatusNotification", {"status": status, "requestId": request_id})

        try:
            await self.ctl.fota(firmware, report)
        finally:
            self._firmware_busy = False


def _http_put(url, body):
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"remoteLocation {url.split(':', 1)[0]}:// is not supported (http, https)")
    req = urllib.request.Request(url, data=body, method="PUT",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        if r.status >= 300:
            raise OSError(f"HTTP {r.status}")
