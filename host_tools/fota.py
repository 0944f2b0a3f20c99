"""Push a signed update bundle to a controller over the host link (docs/updates.md).

The bundle goes as one byte stream in `fota_chunk` commands (ordinary "cmd"/"res"
messages), each chunk sized so its frame stays within the link's 1024 bytes. Several chunks
are in flight at once (a window): the controller handles them in order, so the host only
waits when the window is full. Chunks are idempotent by offset, so a lost frame or a
timeout is handled by going back to the last acknowledged offset and sending again.

Resume: `fota_status` tells the download the controller holds (bundle id, size, next
offset); if it is this bundle, the push continues from there, after a dropped link or a
reset of either side.

After `fota_finish` the controller reboots into the new slot on trial and confirms it
itself once its health check passes; `push()` waits for that and reports the version the
controller then runs.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import cbor2

from host_tools.link import MAX_FRAME, VERSION, LinkClient, LinkError, encode_frame, new_txn

HEADER_LEN = 8
MAX_COSE_LEN = 8192
CTL_MAX_CHUNK = 1000  # firmware/app/update.py MAX_CHUNK
DEFAULT_WINDOW = 4
# While the controller checks a bundle's head it answers "ok" without moving `next` (it works
# on the signature between its control steps, docs/signed-updates.md): the sender then waits
# this long and sends one chunk to ask again, instead of filling the window with held chunks.
HELD_WAIT_S = 0.25

log = logging.getLogger(__name__)


class FotaError(Exception):
    """The update did not complete; `code` is the controller's refusal (V2G-xxx) or None."""

    def __init__(self, msg: str, code: str | None = None):
        super().__init__(msg)
        self.code = code


@dataclass
class PushReport:
    size: int
    resumed_from: int
    sent_bytes: int = 0          # bundle bytes sent, re-sends included
    wire_bytes: int = 0          # frame bytes written for the chunks (CBOR, CRC, COBS, 0x00)
    frames: int = 0
    go_backs: int = 0            # times the window went back to the acknowledged offset
    held_waits: int = 0          # waits while the controller checked the head's signature
    transfer_s: float = 0.0
    slot: str | None = None
    version: str | None = None   # the bundle's version
    running: dict = field(default_factory=dict)   # fota_status once the trial ended

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def bundle_id(bundle: bytes) -> bytes:
    """16 bytes naming a bundle: SHA-256 of its header and COSE_Sign1 (what the signature covers)."""
    if len(bundle) < HEADER_LEN or bundle[:4] != b"V2GB":
        raise FotaError("not an update bundle (no V2GB header)")
    n = int.from_bytes(bundle[4:8], "big")
    if not 1 <= n <= MAX_COSE_LEN or len(bundle) < HEADER_LEN + n:
        raise FotaError("bundle header: COSE_Sign1 length {} is invalid or past the end".format(n))
    return hashlib.sha256(bundle[:HEADER_LEN + n]).digest()[:16]


def chunk_size(size: int, max_frame: int = MAX_FRAME) -> int:
    """The largest chunk whose fota_chunk frame fits the link's frame limit."""
    probe = {"v": VERSION, "t": "cmd", "txn": new_txn(), "op": "fota_chunk",
             "args": {"off": size, "data": b""}}
    overhead = len(cbor2.dumps(probe, canonical=True)) + 4 + 2   # CRC, and a 3-byte bytes head
    return min(CTL_MAX_CHUNK, max_frame - overhead)


class _Window:
    """Results of the chunks in flight, by txn, delivered from the link's reader thread."""

    def __init__(self):
        self.cond = threading.Condition()
        self.results: dict[str, dict] = {}
        self.wanted: set[str] = set()

    def on_res(self, msg: dict) -> None:
        with self.cond:
            if msg["txn"] in self.wanted:
                self.results[msg["txn"]] = msg
                self.cond.notify_all()

    def forget(self, txns) -> None:
        with self.cond:
            self.wanted.difference_update(txns)


class _Pacer:
    """Holds writes to a line rate (10 bits a byte): a pseudo-terminal has none of its own."""

    def __init__(self, baud: int | None):
        self.rate = baud / 10 if baud else None
        self.t0 = time.monotonic()
        self.bytes = 0

    def before(self, n: int) -> None:
        if self.rate is None:
            return
        self.bytes += n
        wait = self.t0 + self.bytes / self.rate - time.monotonic()
        if wait > 0:
            time.sleep(wait)


def status(client: LinkClient, timeout: float = 5.0) -> dict:
    r = client.command("fota_status", {}, timeout=timeout)
    if not r.ok:
        raise FotaError("fota_status refused: {}".format(r.msg), r.code)
    return r.data


def transfer(client: LinkClient, bundle: bytes, *, window: int = DEFAULT_WINDOW,
             progress: Callable[[int, int], None] | None = None, timeout: float = 5.0,
             max_timeouts: int = 5, pace_baud: int | None = None,
             stop_at: int | None = None) -> PushReport:
    """Send the bundle, or continue the controller's download of it; returns when the
    controller holds every byte (or `stop_at` bytes: tests of an interrupted transfer)."""
    if not 1 <= window <= 16:
        raise FotaError("window must be 1 .. 16 chunks")
    size = len(bundle)
    bid = bundle_id(bundle)
    st = status(client, timeout)
    if st.get("trial"):
        raise FotaError("slot {} is on trial; wait for its confirmation or revert".format(st.get("pending")))
    dl = st.get("dl")
    if dl and bytes(dl.get("id", b"")) == bid and dl.get("size") == size and dl.get("next") is not None:
        start = dl["next"]
    else:
        r = client.command("fota_begin", {"size": size, "id": bid}, timeout=timeout)
        if not r.ok:
            raise FotaError("refused: {}".format(r.msg), r.code)
        start = 0
    rep = PushReport(size=size, resumed_from=start)
    step = chunk_size(size, client.max_frame)
    win = _Window()
    pacer = _Pacer(pace_baud)
    unsubscribe = client.subscribe("res", win.on_res)
    inflight: dict[str, int] = {}   # txn -> offset
    acked = nxt = start
    timeouts = 0
    held = False                    # the controller holds what follows the head: one chunk at a time
    end = size if stop_at is None else min(size, stop_at)
    t0 = time.monotonic()
    if progress:
        progress(acked, size)
    try:
        while acked < end:
            while nxt < end and len(inflight) < (1 if held else window):
                data = bundle[nxt:nxt + step]
                txn = new_txn()
                msg = {"v": VERSION, "t": "cmd", "txn": txn, "op": "fota_chunk",
                       "args": {"off": nxt, "data": data}}
                frame_len = len(encode_frame(msg, client.max_frame))
                with win.cond:
                    win.wanted.add(txn)
                inflight[txn] = nxt
                pacer.before(frame_len)
                client.send(msg)
                rep.frames += 1
                rep.wire_bytes += frame_len
                rep.sent_bytes += len(data)
                nxt += len(data)
            with win.cond:
                if not win.results:
                    win.cond.wait(timeout)
                got = win.results
                win.results = {}
                win.wanted.difference_update(got)
            if not got:
                timeouts += 1
                if timeouts > max_timeouts:
                    raise FotaError("the controller stopped answering at offset {} ({} waits of {:g} s)".format(
                        acked, max_timeouts, timeout))
                # lost frames: back to the last acknowledged offset (chunks are idempotent)
                win.forget(inflight)
                inflight.clear()
                rep.go_backs += 1
                nxt = acked
                continue
            timeouts = 0
            held = False
            for txn, res in got.items():
                off = inflight.pop(txn, None)
                if off is None:
                    continue
                nx = res["data"].get("next")
                if res["ok"]:
                    acked = max(acked, nx)
                    held = held or nx < off + min(step, size - off)
                elif res["code"] == "V2G-400" and isinstance(nx, int):
                    # a gap: a chunk before this one was lost; resend from what the controller has
                    acked = max(acked, nx)
                    win.forget(inflight)
                    inflight.clear()
                    rep.go_backs += 1
                    nxt = acked
                    break
                else:
                    raise FotaError("refused at offset {}: {}".format(acked, res["msg"]), res["code"])
            if held:
                # the rest of the window is held too: ask again from `next` after a pause
                win.forget(inflight)
                inflight.clear()
                nxt = acked
                rep.held_waits += 1
                time.sleep(HELD_WAIT_S)
            if progress:
                progress(acked, size)
    finally:
        unsubscribe()
    rep.transfer_s = time.monotonic() - t0
    return rep


def finish(client: LinkClient, *, reboot: bool = True, tries: int | None = None,
           trial_s: int | None = None, healthy_s: int | None = None, timeout: float = 10.0) -> dict:
    args: dict = {"reboot": reboot}
    if healthy_s is not None:
        args["healthy_s"] = healthy_s
    if tries is not None:
        args["tries"] = tries
    if trial_s is not None:
        args["trial_s"] = trial_s
    r = client.command("fota_finish", args, timeout=timeout)
    if not r.ok:
        raise FotaError("refused: {}".format(r.msg), r.code)
    return r.data


def wait_trial_end(client: LinkClient, timeout: float = 90.0) -> dict:
    """Poll fota_status until no slot is pending or on trial (confirmed, or reverted)."""
    deadline = time.monotonic() + timeout
    last: dict = {}
    while time.monotonic() < deadline:
        try:
            last = status(client, 3.0)
        except LinkError:
            time.sleep(0.5)    # rebooting: no answer for a moment
            continue
        if not last.get("trial") and last.get("pending") is None:
            return last
        time.sleep(0.5)
    raise FotaError("still on trial after {:g} s (status {})".format(timeout, last))


def push(client: LinkClient, bundle: bytes, *, window: int = DEFAULT_WINDOW,
         progress: Callable[[int, int], None] | None = None, reboot: bool = True,
         wait: bool = True, tries: int | None = None, trial_s: int | None = None,
         healthy_s: int | None = None, confirm_timeout: float = 90.0, pace_baud: int | None = None) -> PushReport:
    """Transfer, finish, and (with reboot and wait) report the firmware running afterwards.

    Raises FotaError when the controller refuses (its code: V2G-601/602/400), stops
    answering, or comes back running something other than the new bundle (V2G-603)."""
    rep = transfer(client, bundle, window=window, progress=progress, pace_baud=pace_baud)
    hello = threading.Event()
    unsubscribe = client.subscribe("hello", lambda m: hello.set() if "fw" in m else None)
    try:
        done = finish(client, reboot=reboot, tries=tries, trial_s=trial_s, healthy_s=healthy_s)
        rep.slot = done.get("slot")
        rep.version = done.get("version")
        if reboot and wait:
            if not hello.wait(30):
                raise FotaError("the controller did not come back (no hello within 30 s of the reboot)")
            rep.running = wait_trial_end(client, confirm_timeout)
            if rep.running.get("active") != rep.slot:
                raise FotaError("slot {} failed its trial; the controller runs {} again".format(
                    rep.slot, rep.running.get("version")), "V2G-603")
    finally:
        unsubscribe()
    return rep


# -- from the bridge (OCPP UpdateFirmware) ---------------------------------------------------

class _ThreadedAsyncLink:
    """The bridge's AsyncLink seen as a LinkClient from a worker thread, so that the same
    transfer code runs there while the bridge's loop keeps serving the CSMS."""

    max_frame = MAX_FRAME

    def __init__(self, alink, loop):
        self.alink = alink
        self.loop = loop

    def command(self, op, args=None, *, timeout=3.0, **_):
        fut = asyncio.run_coroutine_threadsafe(self.alink.command(op, args, timeout=timeout), self.loop)
        return fut.result(timeout * 3 + 5)

    def send(self, msg):
        async def _send():
            self.alink.send(msg)
        asyncio.run_coroutine_threadsafe(_send(), self.loop).result(10)

    def subscribe(self, t, fn):
        self.loop.call_soon_threadsafe(self.alink.subscribe, t, fn)

        def unsubscribe():
            def drop():
                lst = self.alink.subs.get(t, [])
                if fn in lst:
                    lst.remove(fn)
            self.loop.call_soon_threadsafe(drop)
        return unsubscribe


def _fetch(url: str) -> bytes:
    import urllib.request
    if not url.startswith(("http://", "https://", "file://")):
        raise ValueError("location {}:// is not supported (http, https, file)".format(url.split(":", 1)[0]))
    with urllib.request.urlopen(url, timeout=60) as r:
        return r.read(8 + MAX_COSE_LEN + 2 * 1024 * 1024)


_SIGNATURE_CHECKS = ("signature", "kid", "alg", "cose", "cbor", "header")


def bridge_updater(alink, fetch=_fetch, **push_kw):
    """The `fota` coroutine the bridge calls for OCPP UpdateFirmware: fetch the bundle from
    firmware["location"], push it to the controller, and report each FirmwareStatus."""

    async def update(firmware: dict, report) -> None:
        loop = asyncio.get_running_loop()
        await report("Downloading")
        try:
            data = await loop.run_in_executor(None, fetch, firmware.get("location", ""))
            bundle_id(data)
        except Exception:  # noqa: BLE001 - any fetch failure is DownloadFailed to the CSMS
            log.exception("fota: download failed")
            await report("DownloadFailed")
            return
        await report("Downloaded")
        client = _ThreadedAsyncLink(alink, loop)
        try:
            # the controller checks the signature as the bundle reaches it (OCPP L01): only
            # a bundle it holds whole and verified is SignatureVerified, then Installing
            await loop.run_in_executor(None, lambda: transfer(client, data, **{
                k: v for k, v in push_kw.items() if k in ("window",)}))
            await report("SignatureVerified")
            await report("Installing")
            await report("InstallRebooting")
            await loop.run_in_executor(None, lambda: _finish_and_wait(client, push_kw))
        except FotaError as e:
            log.warning("fota: %s", e)
            what = str(e).split(": ", 1)[-1].split(":", 1)[0]   # the controller's check name
            if e.code == "V2G-601" and what in _SIGNATURE_CHECKS:
                await report("InvalidSignature")
            elif e.code in ("V2G-601", "V2G-602"):
                await report("InstallVerificationFailed")
            else:
                await report("InstallationFailed")
            return
        except Exception:  # noqa: BLE001 - the link failed: reported, never raised into the bridge
            log.exception("fota: install failed")
            await report("InstallationFailed")
            return
        await report("Installed")

    return update


def _finish_and_wait(client, kw):
    hello = threading.Event()
    unsubscribe = client.subscribe("hello", lambda m: hello.set() if "fw" in m else None)
    try:
        done = finish(client, tries=kw.get("tries"), trial_s=kw.get("trial_s"), healthy_s=kw.get("healthy_s"))
        if not hello.wait(30):
            raise FotaError("the controller did not come back after the reboot")
        st = wait_trial_end(client, kw.get("confirm_timeout", 90.0))
        if st.get("active") != done.get("slot"):
            raise FotaError("slot {} failed its trial".format(done.get("slot")), "V2G-603")
    finally:
        unsubscribe()
