"""Wiring: one `StationBridge` per controller (host link + OCPP station + app channel),
`Gateway` runs any number of them on one asyncio loop with one MQTT client.

The controller decides; the bridge carries. CSMS limits and app targets become host
link commands, and whatever the controller answers (a refusal included) is what the
CSMS and the app are told.
"""

import asyncio
import fcntl
import json
import logging
import os
import random
import re
import secrets
import socket
import time
import urllib.parse
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

from host_tools import link as hl
from host_tools.bridge import config as cfgdir
from host_tools.bridge.alink import AsyncLink
from host_tools.bridge.auth import AuthError, TokenVerifier
from host_tools.bridge.backoff import Backoff
from host_tools.bridge import departure
from host_tools.bridge.local_link import LocalLink
from host_tools.bridge.ocpp import Security, check_station_id
from host_tools.bridge.ocpp16.negotiated import NegotiatedStation
from host_tools.bridge.queue import read_json, write_json_atomic

log = logging.getLogger(__name__)

LOG_NAME = "central_system.log"
APP_OPS = ("soc_target", "reserve_margin", "charge_only")
RESULTS_KEPT = 500
STATUS_POLL_S = 5.0


class CentralLog:
    """central_system.log: one line per event, `time code station message`."""

    def __init__(self, log_dir):
        self.dir = Path(log_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / LOG_NAME
        self._f = open(self.path, "a", encoding="utf-8", buffering=1)

    def event(self, station, code, msg):
        ts = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        line = f"{ts} {code or 'INFO'} {station} {msg}".replace("\n", " ")
        self._f.write(line + "\n")
        log.info("%s", line)

    def close(self):
        self._f.close()


BRIDGE_OFFLINE = "bridge offline"
GATEWAY_TOPIC_ID = "_gateway"     # v2g/_gateway/<gateway id>/status: not a station id


def default_gateway_id():
    """This machine's name in the characters a topic level and a station id allow."""
    name = re.sub(r"[^A-Za-z0-9._:-]", "-", socket.gethostname())[:48].strip(".")
    return name or "gateway"


def bridge_client_id(gateway_id):
    """The MQTT client id the bridge asks for. The shipped broker replaces it with the user
    name; on a broker that does not, its random part keeps another client from guessing it
    and taking the connection over (the gateway id is published, pids are small)."""
    return f"v2g-bridge-{gateway_id}-{secrets.token_hex(8)}"


def will_status(station):
    """The retained status the broker publishes for a single-station bridge that died:
    the shape of StationBridge.status_doc, nothing known but that the bridge is gone."""
    return {"station": station, "online": False, "csms": False, "ocpp": None, "fw": None, "mode": None,
            "cp": None, "soc_pct": None, "power_w": None, "errors": [],
            "v2g": {"available": False, "reason": BRIDGE_OFFLINE},
            "target_pct": None, "floor_pct": None, "charge_only": None, "departure": None, "stopped": None, "operative": None,
            "limits": None, "gateway": None}


# the CSMS's OCPP version rules discharge out whatever the controller could do
V2G_OCPP16 = "V2G-302 the CSMS speaks OCPP 1.6: discharge needs 2.0.1 or later"


def v2g_reason(status, online, plugged, ocpp_version=None):
    """(available, reason) for the app from the controller's status (and the CSMS's version)."""
    if not online:
        return False, "controller offline"
    if ocpp_version == "1.6":
        return False, V2G_OCPP16
    errs = status.get("errors", [])
    if status.get("heartbeat_lost") or "V2G-101" in errs:
        return False, "V2G-101 host heartbeat lost: charge-only until the host is back and a fresh command"
    for code, why in (("V2G-010", "control pilot fault"), ("V2G-011", "contactor fault"),
                      ("V2G-120", "meter stale"), ("V2G-130", "vehicle BMS frames missing"),
                      ("V2G-503", "grid over-voltage trip"), ("V2G-504", "grid under-voltage trip"),
                      ("V2G-505", "grid over-frequency trip"), ("V2G-506", "grid under-frequency trip"),
                      ("V2G-507", "waiting to enter service"), ("V2G-009", "thermal limit")):
        if code in errs:
            return False, f"{code} {why}"
    if status.get("charge_only"):
        return False, "charge-only asked"
    if status.get("stopped"):
        return False, "session stopped (by the CSMS, or the station is inoperative)"
    if not plugged:
        return False, "no vehicle connected"
    if not status.get("v2g_available"):
        return False, "V2G-301 SoC at or below the floor + V2G_AVAILABLE_MARGIN"
    return True, None


class _CurrentLink:
    """Stands for the bridge's host link of the moment (looked up on every attribute use)."""

    def __init__(self, bridge):
        self._bridge = bridge

    def __getattr__(self, name):
        link = self._bridge.link
        if link is None:
            raise hl.LinkError(f"controller {self._bridge.id} is offline")
        return getattr(link, name)


class StateDirLocked(Exception):
    """Another bridge process serves this station from the same state directory."""


def lock_state_dir(d):
    """An exclusive flock on d/lock, held for the life of the returned file; the file names
    the holder's pid so the refusal can say which process has it."""
    path = Path(d) / "lock"
    f = open(path, "a+", encoding="utf-8")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise StateDirLocked(f"state directory {d} is in use by another bridge (pid {holder}); "
                             "two bridges on one station would overwrite each other's queue") from e
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


class StationBridge:
    def __init__(self, station_id, link_url, csms_url, *, clog, state_dir, config_dir=None,
                 mqtt=None, verifier=None, max_version="2.1", security=None, meter_interval_s=60.0,
                 tel_batch=5, backoff=None, hello_timeout_s=5.0, heartbeat_s=hl.HEARTBEAT_S,
                 fota=None, handshake_timeout_s=10.0, allow_file_updates=False, local_link_port=None):
        self.id = check_station_id(station_id)
        self.link_url = link_url
        self.clog = clog
        self.state_dir = Path(state_dir) / station_id
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._lock = lock_state_dir(self.state_dir)   # before the queue is opened (it tidies files)
        self.mqtt = mqtt
        self.verifier = verifier
        self.tel_batch = tel_batch
        self.hello_timeout_s = hello_timeout_s
        self.heartbeat_s = heartbeat_s
        # OCPP UpdateFirmware: fetch the signed bundle and push it over this controller's link
        self.fota = fota if fota is not None else self._push_update
        self.link = None
        self.online = False
        self.sample = None
        self.fw = None
        self.serial = None
        self.settings = {}
        self.status = {}
        self.app_target = read_json(self.state_dir / "app_target.json", None)
        self._forced = None
        self._samples = []
        self._last_status = None
        self._results_file = self.state_dir / "app_results.json"
        self.results = read_json(self._results_file, {}) or {}
        self._cmd_lock = asyncio.Lock()
        self.ocpp = NegotiatedStation(station_id, csms_url, self, self.state_dir / "ocpp", clog,
                                max_version=max_version, security=security, backoff=backoff,
                                meter_interval_s=meter_interval_s, handshake_timeout_s=handshake_timeout_s,
                                allow_file_updates=allow_file_updates)
        self.frame_hook = None   # bench: called with each cmd sent to the controller
        self.gateway = None      # the gateway id when several stations share one MQTT client
        self.bridge_down = False  # set on a clean stop: the last status says the bridge is gone
        self._ready = asyncio.Event()
        # local tools (v2g fota/diag/console) share this controller's link through the bridge
        self.local = None
        if local_link_port is not None:
            try:
                self.local = LocalLink(local_link_port, name=station_id,
                                       clog=lambda code, msg: self.clog.event(self.id, code, msg),
                                       busy=lambda: self.ocpp.firmware_busy)
            except OSError:
                self.close()
                raise

    def local_update_running(self):
        """A local tool is pushing an update through the local link (UpdateFirmware waits)."""
        return self.local is not None and self.local.local_update_running()

    async def _push_update(self, firmware, report):
        if self.link is None:
            await report("InstallationFailed")
            return
        from host_tools import fota as fota_mod
        # the controller reboots during an update and the link loop opens a new link:
        # every use goes to the link of the moment, not the one open when the update began
        await fota_mod.bridge_updater(_CurrentLink(self))(firmware, report)

    async def wait_ready(self, timeout):
        """Wait (at most timeout s) for the controller's hello."""
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    # ------------------------------------------------------------------ controller facade (for OcppStation)

    @property
    def volts(self):
        mv = (self.sample or {}).get("mv", 0)
        return mv / 1000 if mv > 50_000 else float(self.settings.get("NOMINAL_VOLTAGE_V", 230))

    @property
    def phases(self):
        return int(self.settings.get("PHASES", 1))

    @property
    def max_charge_a(self):
        return float(self.settings.get("MAX_CHARGE_AMPS", 32))

    @property
    def max_discharge_a(self):
        """The controller's discharge ceiling: a CSMS asking more gets this (and is told so)."""
        return float(self.settings.get("MAX_DISCHARGE_AMPS", 32))

    async def command(self, op, args, txn=None):
        if self.link is None or not self.online:
            raise hl.LinkError(f"controller {self.id} is offline")
        if self.frame_hook:
            self.frame_hook(op, args)
        return await self.link.command(op, args, txn or ("b" + uuid.uuid4().hex[:20]))

    async def apply_csms_plan(self, plan):
        """Tell the controller the CSMS's limits; (ok, message)."""
        async with self._cmd_lock:
            if plan is None:
                res = await self.command("limit", {"charge_a": None, "discharge_a": None})
                direction = None
            else:
                res = await self.command("limit", {"charge_a": plan["charge_a"],
                                                   "discharge_a": plan["discharge_a"]})
                direction = plan["direction"]
            if not res.ok:
                return False, f"{res.code}: {res.msg}"
            if direction != self._forced:
                if direction == "discharge":
                    r = await self.command("soc_target", {"soc_pct": 0, "mode": "discharge"})
                elif direction == "charge":
                    r = await self.command("soc_target", {"soc_pct": 100, "mode": "charge"})
                elif direction is None and self._forced is not None:
                    r = await self.command("soc_target", self._app_target_args())
                else:
                    r = res
                if not r.ok:
                    return False, f"{r.code}: {r.msg}"
                self._forced = direction
            self.clog.event(self.id, "INFO", f"CSMS plan applied: {plan}")
            return True, res.msg

    def _app_target_args(self):
        """The app's last target as the controller takes it now; a departure that has passed
        meanwhile is left out (the target alone comes back)."""
        t = self.app_target or {"soc_pct": 100, "mode": "charge"}
        try:
            return departure.controller_args(t)
        except ValueError as e:
            self.clog.event(self.id, "INFO", f"app target restored without its departure: {e}")
            return departure.controller_args({k: v for k, v in t.items() if k != "departure"})

    async def diagnostic_report(self):
        """The controller's diagnostics and event log plus the bridge's view; a part the
        controller does not deliver is named with the reason instead of failing the report."""
        out = {"generated": datetime.now(timezone.utc).isoformat(), "status": self.status,
               "last_sample": self.sample}
        try:
            out["diag"] = (await self.command("diag", {})).data
        except hl.LinkError as e:
            out["diag_error"] = str(e)
        try:
            events, start = [], 0
            while start is not None:      # the log comes in pages that fit one frame
                page = (await self.command("events", {"start": start})).data
                events += page.get("events", [])
                start = page.get("next")
            out["events"] = events
        except hl.LinkError as e:
            out["events_error"] = str(e)
        if self.link is not None:
            out["host_link"] = {"rx": dict(self.link.deframer.stats), "last_error": self.link.deframer.last_error,
                                "rtt_ms": self.link.rtt_ms}
        if self.local is not None:
            out["local_link"] = self.local.report()
        return out

    # ------------------------------------------------------------------ link

    async def run(self):
        tasks = [asyncio.ensure_future(self.ocpp.run()), asyncio.ensure_future(self._link_loop())]
        if self.local is not None:
            tasks.append(asyncio.ensure_future(self.local.serve()))
        if self.mqtt is not None:
            self.mqtt.register(self.id, self.on_app_message)
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def close(self):
        """Release the state directory (the lock); the bridge must not run after this."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        if self.local is not None:
            self.local.sock.close()

    async def _link_loop(self):
        back = Backoff(1.0, 1.0, 3)
        while True:
            link = AsyncLink(self.link_url, heartbeat_s=self.heartbeat_s, name=self.id)
            try:
                await link.open()
                link.subscribe("tel", self._on_tel)
                link.subscribe("evt", self._on_evt)
                link.subscribe("hello", self._on_hello)
                try:
                    hello = await link.hello(self.hello_timeout_s)
                except hl.LinkTimeout:
                    self.clog.event(self.id, "V2G-140", f"ERR_V2G_HANDSHAKE_TIMEOUT: controller on "
                                    f"{self.link_url} did not answer hello within {self.hello_timeout_s:g} s")
                    raise
                self.link = link
                if self.local is not None:
                    self.local.attach(link)
                self._on_hello(hello)
                self.online = True
                self._ready.set()
                self.clog.event(self.id, "INFO", f"controller fw {hello['fw']} board {hello['board']} "
                                f"boot {hello['boot_count']} on {self.link_url}")
                res = await link.command("config_get", {})
                if res.ok:
                    self.settings = res.data.get("values", {})
                await self.ocpp.controller_up()
                back.reset()
                poller = asyncio.ensure_future(self._status_poller())
                try:
                    await link.closed.wait()
                finally:
                    poller.cancel()
                self.clog.event(self.id, "INFO", f"controller link lost: {link.error}")
            except hl.LinkError as e:
                self.clog.event(self.id, "INFO", f"controller link: {e}")
            finally:
                self.online = False
                if self.local is not None:
                    self.local.detach(link)
                await link.close()
                self._publish_status()
            await asyncio.sleep(back.next())

    def _on_hello(self, msg):
        if "fw" in msg:
            if self.fw is not None and msg["fw"] != self.fw:
                self.ocpp.firmware_changed(msg["fw"])
            self.fw = msg["fw"]
            self.serial = f"{msg['board']}-{self.id}"

    async def _status_poller(self):
        await self.refresh_status()
        await asyncio.sleep(STATUS_POLL_S * random.random())   # spread a site's polls (see alink)
        while True:
            await self.refresh_status()
            await asyncio.sleep(STATUS_POLL_S)

    async def refresh_status(self):
        try:
            res = await self.command("status", {})
        except hl.LinkError as e:
            log.debug("%s: status poll failed: %s", self.id, e)
            return
        if res.ok:
            self.status = res.data
            self._publish_status()

    def _on_tel(self, msg):
        now = time.monotonic()
        for s in msg["samples"]:
            self.sample = s
            self.ocpp.on_sample(s, now)
            self._samples.append(s)
        if self.mqtt is not None and len(self._samples) >= self.tel_batch:
            # QoS 1 and the publishing time (ms since the epoch): the API's history keeps every
            # batch across its own restarts (persistent session) and dates each sample by it
            self.mqtt.publish(self.id, "telemetry", {"station": self.id, "ts": int(time.time() * 1000),
                                                     "samples": self._samples}, qos=1)
            self._samples = []
        elif self.mqtt is None:
            self._samples = []
        self._publish_status()

    def _on_evt(self, msg):
        for e in msg["events"]:
            self.clog.event(self.id, e["code"], ("raised: " if e["on"] else "cleared: ") + e["msg"])
            if self.mqtt is not None:
                self.mqtt.publish(self.id, "events", {"station": self.id, "ts": int(time.time() * 1000), **e},
                                  qos=1)
        asyncio.ensure_future(self.refresh_status())

    def status_doc(self):
        s = self.sample or {}
        plugged = s.get("cp") in ("B", "C", "D")
        ok, reason = v2g_reason(self.status, self.online, plugged, self.ocpp.version)
        if self.bridge_down:
            ok, reason = False, BRIDGE_OFFLINE
        st = self.status
        return {"station": self.id, "online": self.online, "csms": self.ocpp.connected.is_set(),
                "ocpp": self.ocpp.version, "fw": self.fw, "mode": s.get("mode"), "cp": s.get("cp"),
                "soc_pct": hl.soc_pct(s) if plugged else None,
                "power_w": s.get("w"), "errors": s.get("errors", []),
                "v2g": {"available": ok, "reason": reason},
                "target_pct": (st.get("target_pm") / 10) if st.get("target_pm", -1) >= 0 else None,
                "floor_pct": (st.get("floor_pm") / 10) if st.get("floor_pm") is not None else None,
                "charge_only": st.get("charge_only"),
                "departure": self._departure(st),
                "stopped": st.get("stopped"),          # the controller's own word: session stopped
                "operative": self.ocpp.available,      # OCPP ChangeAvailability
                "limits": {"charge_a": s.get("lim_chg_ma", 0) / 1000, "charge_src": s.get("lim_chg_src"),
                           "discharge_a": s.get("lim_dis_ma", 0) / 1000,
                           "discharge_src": s.get("lim_dis_src")},
                "gateway": self.gateway}

    def _departure(self, st):
        """The departure the controller holds (ISO 8601, UTC), null without one: the driver's
        own time when it is the app's, else now + the controller's seconds."""
        left = st.get("departure_s")
        if not isinstance(left, int) or isinstance(left, bool) or left <= 0:
            return None
        dep = (self.app_target or {}).get("departure")
        if dep is not None:
            try:
                return departure.parse(dep).astimezone(timezone.utc).isoformat()
            except ValueError:
                pass
        t = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=left)
        return t.isoformat()

    def republish_status(self):
        """Publish the status even if unchanged (the broker's retained copy may be a Will's)."""
        self._last_status = None
        self._publish_status()

    def _publish_status(self):
        if self.mqtt is None:
            return
        doc = self.status_doc()
        key = json.dumps({k: v for k, v in doc.items() if k not in ("power_w",)}, sort_keys=True)
        if key != self._last_status:
            self._last_status = key
            self.mqtt.publish(self.id, "status", doc, qos=1, retain=True)

    # ------------------------------------------------------------------ app commands

    async def on_app_message(self, raw, correlation=None):
        try:
            result = await self.app_command(raw)
        except asyncio.CancelledError:
            raise
        except Exception as e:   # noqa: BLE001 - the app always gets an answer
            log.exception("%s: app command failed", self.id)
            self.clog.event(self.id, "V2G-400", f"app command failed: {type(e).__name__}: {e}")
            result = self._result(None, False, "V2G-400", f"command not processed: {type(e).__name__}")
        self.mqtt.publish(self.id, "cmd/result", result, qos=1, correlation=correlation)

    async def app_command(self, raw):
        """The result for one command message from the app (bytes or dict)."""
        try:
            msg = json.loads(raw) if isinstance(raw, (bytes, str)) else raw
            if not isinstance(msg, dict):
                raise ValueError("a command is a JSON object")
        except (ValueError, RecursionError) as e:   # RecursionError: nesting too deep to parse
            return self._result(None, False, "V2G-400", f"command is not valid JSON: {type(e).__name__}: "
                                f"{str(e)[:200]}")
        txn = msg.get("txn")
        if not isinstance(txn, str) or not 1 <= len(txn) <= 40:
            return self._result(None, False, "V2G-400", "txn: must be text of 1 to 40 characters")
        # authenticate before anything else: an unauthenticated message changes nothing,
        # not even the record of transaction ids
        if self.verifier is None:
            return self._result(txn, False, "V2G-401", "no app token key configured on this gateway")
        try:
            claims = self.verifier.verify(msg.get("token"))
        except AuthError as e:
            self.clog.event(self.id, "V2G-401", f"app command txn {txn} refused: {e}")
            return self._result(txn, False, "V2G-401", f"unauthorized: {e}")
        op = msg.get("op")
        async with self._cmd_lock:
            if txn in self.results:
                res = self.results[txn]
                self.clog.event(self.id, "INFO", f"app command txn {txn} repeated: original result sent again")
            else:
                try:
                    res, keep = await self._app_op(txn, op, msg.get("args") or {})
                except (RecursionError, ValueError) as e:   # args the link cannot encode
                    res, keep = self._result(txn, False, "V2G-400", f"args: {type(e).__name__}: "
                                             f"{str(e)[:200]}"), True
                if keep:   # a link outage is not an answer worth keeping
                    self.results[txn] = res
                    while len(self.results) > RESULTS_KEPT:
                        self.results.pop(next(iter(self.results)))
                    write_json_atomic(self._results_file, self.results)
                self.clog.event(self.id, res["code"] or "INFO", f"app command {op} txn {txn} by "
                                f"{claims.get('sub', '?')}: {res['msg']}")
        asyncio.ensure_future(self.refresh_status())
        return res

    def _result(self, txn, ok, code, msg, data=None):
        return {"txn": txn, "ok": ok, "code": code, "msg": msg, "data": data or {}}

    async def _app_op(self, txn, op, args):
        """(result, keep): keep is False when the controller could not be asked (the same
        txn may then be tried again)."""
        if not isinstance(args, dict):
            return self._result(txn, False, "V2G-400", "args: must be an object"), True
        if op == "soc_target":
            try:
                # the departure as seconds from now, worked out as it is sent (no clock there)
                cmd = ("soc_target", departure.controller_args(args))
            except ValueError as e:
                return self._result(txn, False, "V2G-400", str(e)), True
        elif op == "reserve_margin":
            if set(args) != {"pct"}:
                return self._result(txn, False, "V2G-400", "args: reserve_margin takes exactly {pct}"), True
            cmd = ("config_set", {"RESERVE_MARGIN": args["pct"]})
        elif op == "charge_only":
            cmd = ("charge_only", dict(args))
        else:
            return self._result(txn, False, "V2G-400", f"op: {op!r} is not one of {', '.join(APP_OPS)}"), True
        ctl_txn = "a" + txn
        try:
            # the frame the link would send: a command that cannot be one is the app's error,
            # not an unreachable controller
            hl.encode_frame({"v": hl.VERSION, "t": "cmd", "txn": ctl_txn, "op": cmd[0], "args": cmd[1]})
        except hl.LinkError as e:
            return self._result(txn, False, "V2G-400", f"args: {e}"), True
        try:
            r = await self.command(cmd[0], cmd[1], txn=ctl_txn)
        except hl.LinkError as e:
            return self._result(txn, False, "V2G-110", f"controller unreachable, try again: {e}"), False
        if r.ok and op == "soc_target":
            self.app_target = dict(args)       # the driver's own time, converted again when re-sent
            write_json_atomic(self.state_dir / "app_target.json", self.app_target)
        return self._result(txn, r.ok, r.code, r.msg, r.data), True


class Gateway:
    """Several StationBridges (a site gateway) on one loop, one MQTT client, one log."""

    def __init__(self, stations, *, csms_url, config_dir, log_dir, state_dir, mqtt_url=None,
                 max_version="2.1", security_profile=None, meter_interval_s=60.0, tel_batch=5,
                 backoff=None, handshake_timeout_s=10.0, allow_file_updates=False, gateway_id=None,
                 local_link_port=None):
        stations = list(stations)
        if not stations:
            raise ValueError("no stations to serve")
        if local_link_port is not None and len(stations) > 1:
            raise ValueError("--local-link shares one controller's link; it cannot be used with a site "
                             "of several controllers")
        self.gateway_id = check_station_id(gateway_id or default_gateway_id())
        seen = set()
        for station_id, _ in stations:
            check_station_id(station_id)
            if station_id == GATEWAY_TOPIC_ID:
                raise ValueError(f"station id {station_id!r} is reserved: v2g/{GATEWAY_TOPIC_ID}/ carries "
                                 "the gateways' own status")
            if station_id in seen:
                raise ValueError(f"station id {station_id!r} is given twice: each controller needs its own id")
            seen.add(station_id)
        d = cfgdir.check_config_dir(config_dir)
        verifiers = {sid: TokenVerifier.from_config_dir(d, sid) for sid, _ in stations}   # bad key: refuse now
        sec = security_for(csms_url, d, security_profile)
        mqtt_pw = cfgdir.secret_text(d, "mqtt_password")
        if mqtt_url and mqtt_pw and not urllib.parse.urlsplit(mqtt_url).username:
            raise ValueError("mqtt_password is in the config directory but the --mqtt URL names no user: "
                             "give it as mqtt(s)://USER@HOST:PORT (else the password would never be sent)")
        self.clog = CentralLog(log_dir)
        if sec.profile == 0:
            # profile 0 is for a local test CSMS; on a real site it must not pass unnoticed
            msg = (f"CSMS {csms_url} without security (profile 0): no Basic Auth password "
                   f"(csms_password in {d}) and no TLS, so anyone on the path can read the traffic and "
                   "connect as this station; use profile 1 (ws + csms_password), 2 or 3 (wss)")
            self.clog.event("-", "WARNING", msg)
            log.warning("%s", msg)
        self.mqtt = None
        self.station_ids = [s for s, _ in stations]
        self.multi = len(stations) > 1
        if mqtt_url:
            from host_tools.bridge.mqtt_app import MqttApp, gateway_topic, topic
            # One Will per MQTT connection. One station: its own status topic says "bridge
            # offline". Several: the gateway's topic does, and each station's status names
            # the gateway, so an app watching a station knows which Will covers it.
            if self.multi:
                will = (gateway_topic(self.gateway_id), self.gateway_doc(False))
            else:
                will = (topic(stations[0][0], "status"), will_status(stations[0][0]))
            self.mqtt = MqttApp(mqtt_url, ca_file=cfgdir.file_or_none(d, "mqtt_ca.pem"),
                                cert_file=cfgdir.file_or_none(d, "mqtt_client_cert.pem"),
                                key_file=cfgdir.file_or_none(d, "mqtt_client_key.pem"),
                                password=mqtt_pw, clog=self.clog,
                                client_id=bridge_client_id(self.gateway_id), will=will)
            self.mqtt.on_connected.append(self._mqtt_connected)
        self.bridges = []
        self.local_link = None
        try:
            for station_id, link_url in stations:
                self.bridges.append(StationBridge(
                    station_id, link_url, csms_url, clog=self.clog, state_dir=state_dir, config_dir=d,
                    mqtt=self.mqtt, verifier=verifiers[station_id], max_version=max_version, security=sec,
                    meter_interval_s=meter_interval_s, tel_batch=tel_batch,
                    backoff=backoff() if backoff else None, handshake_timeout_s=handshake_timeout_s,
                    allow_file_updates=allow_file_updates, local_link_port=local_link_port))
                if self.local_link is None:
                    self.local_link = self.bridges[-1].local
                if self.multi:
                    self.bridges[-1].gateway = self.gateway_id
        except BaseException:
            self.close()
            raise

    def gateway_doc(self, online):
        return {"gateway": self.gateway_id, "online": online,
                "reason": None if online else BRIDGE_OFFLINE, "stations": self.station_ids}

    def _mqtt_connected(self):
        """(Re)connected to the broker: the retained statuses may be a Will's; publish ours."""
        if self.multi:
            from host_tools.bridge.mqtt_app import gateway_topic
            self.mqtt.publish_to(gateway_topic(self.gateway_id), self.gateway_doc(True), qos=1, retain=True)
        for b in self.bridges:
            b.republish_status()

    def close(self):
        """Release every station's state directory and the log."""
        for b in self.bridges:
            b.close()
        self.clog.close()

    async def run(self):
        if self.mqtt is not None:
            await self.mqtt.start()
        self.clog.event("-", "INFO", f"bridge started for {len(self.bridges)} controller(s)")
        tasks = [asyncio.ensure_future(b.run()) for b in self.bridges]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:   # one station failing (or a cancel) stops them all, cleanly
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.mqtt is not None:
                # a clean stop sends no Will: every status goes offline here
                for b in self.bridges:
                    b.online = False
                    b.bridge_down = True
                    b.republish_status()
                if self.multi:
                    from host_tools.bridge.mqtt_app import gateway_topic
                    self.mqtt.publish_to(gateway_topic(self.gateway_id), self.gateway_doc(False), qos=1,
                                         retain=True)
                await asyncio.sleep(0.3)   # let the offline statuses leave before disconnecting
                self.mqtt.stop()


def security_for(csms_url, d, profile=None):
    """The security profile from the option, or guessed: ws -> 1 with a password (else 0),
    wss -> 3 with a client certificate, else 2."""
    pw = cfgdir.secret_text(d, "csms_password")
    cert, key = cfgdir.file_or_none(d, "client_cert.pem"), cfgdir.file_or_none(d, "client_key.pem")
    if profile is None:
        if csms_url.startswith("wss:"):
            profile = 3 if (cert and key) else 2
        else:
            profile = 1 if pw else 0
    return Security(profile, password=pw, ca_file=cfgdir.file_or_none(d, "csms_ca.pem"),
                    cert_file=cert, key_file=key)
