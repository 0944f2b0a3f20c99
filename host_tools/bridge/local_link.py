"""The bridge's controller link, shared with local tools (`v2g bridge --local-link PORT`).

While the bridge runs it holds the controller's serial port, so `v2g fota`, `v2g diag` and
`v2g console` could not reach the controller. With a local link the bridge listens on
127.0.0.1:PORT and speaks the host-link framing there, so a tool connects with
`--port socket://127.0.0.1:PORT` exactly as it would to the controller.

What is relayed (docs/bridge.md, "Local tools while the bridge runs"):
- a client's `cmd` goes to the controller under a controller txn derived from the client's
  txn (`controller_txn`): "L" + SHA-256 hex, never equal to one of the bridge's own txns
  ("h...", "a..."), and the same for every retry of the same client txn, so the controller's
  idempotency holds through the relay, across reconnects too. The `res` goes back, under the
  client's txn, to the client(s) that sent that txn only;
- a client's `hello` request is answered from the controller's last hello (nothing while the
  controller is offline: a tool sees what it would see with no controller on the line);
- a client's `hb` and `rtt` are not forwarded: the bridge sends its own heartbeats, and only
  `hb` keeps the controller out of charge-only (V2G-101), so a local tool never does by itself;
- `tel`, `evt` and every `hello` from the controller go to every client as well;
- frames are relayed whole, re-encoded, one write each, so a client's bytes can never split a
  frame of the bridge's; a corrupt frame from a client is counted and dropped there.

A client that disconnects leaves nothing pending. At most `max_clients` are served; one more
is told why in the link's own terms (its hello is answered, every command refused with
V2G-400 naming the limit) and closed after REFUSED_HOLD_S.
"""

import asyncio
import collections
import hashlib
import logging
import socket
import time

from host_tools import link as hl

log = logging.getLogger(__name__)

MAX_CLIENTS = 4
REFUSED_HOLD_S = 5.0        # how long a refused client hears why before it is closed
MAX_REFUSED = 8             # refused clients held at once; more are closed at once
CLIENT_PENDING = 64         # commands a client may have waiting; the oldest is forgotten past that
CLIENT_TX_LIMIT = 64 * 1024  # a client this far behind misses telemetry rather than grow memory
LINK_BACKLOG = 8 * 1024     # controller-link bytes queued before a client's input is paused
MIN_CTL_TXN = 13            # "L" + 12 hex digits: 48 bits, as many as LinkClient's own txns carry
# fota ops that change the controller's download; refused while an OCPP UpdateFirmware runs
FOTA_WRITE_OPS = ("fota_begin", "fota_chunk", "fota_finish", "fota_abort", "fota_confirm")
LOCAL_UPDATE_S = 30.0       # a local push counts as running this long after its last chunk

STAT_NAMES = ("clients", "clients_refused", "cmds", "results", "late_results", "offline_drops",
              "hello_answered", "hb_ignored", "ignored", "copied", "copies_dropped", "tx_errors",
              "busy_refusals")


def controller_txn(txn: str) -> str:
    """The txn the controller sees for a client's txn: deterministic (a retry maps to the
    same one), starting with "L", which no txn of the bridge's own starts with, and exactly as
    long as the client's (so a command the client sized to fill a frame, a FOTA chunk, still
    fits, and so does its result) unless that is shorter than MIN_CTL_TXN."""
    n = min(hl.TXN_MAX_LEN, max(MIN_CTL_TXN, len(txn)))
    return "L" + hashlib.sha256(txn.encode("utf-8")).hexdigest()[:n - 1]


class _Client:
    def __init__(self, cid, reader, writer):
        self.id = cid
        self.reader = reader
        self.writer = writer
        self.deframer = hl.Deframer()
        self.txns = collections.OrderedDict()   # controller txn -> client txn, oldest first
        peer = writer.get_extra_info("peername")
        self.peer = "{}:{}".format(*peer[:2]) if peer else "?"

    def send(self, msg, stats, bulk=False):
        """Write one message; bulk copies are dropped for a client that does not read."""
        if self.writer.is_closing():
            return False
        if bulk and self.writer.transport.get_write_buffer_size() > CLIENT_TX_LIMIT:
            stats["copies_dropped"] += 1
            return False
        try:
            frame = hl.encode_frame(msg)
        except hl.LinkError as e:
            stats["tx_errors"] += 1
            log.warning("local link: %s not relayed to client %d: %s", msg.get("t"), self.id, e)
            return False
        self.writer.write(frame)
        return True


class LocalLink:
    """Listens on 127.0.0.1:port (0: a free port, see .port) and relays to the link given by
    attach(); `clog(code, msg)` writes the bridge's log; `busy()` says an OCPP update runs."""

    def __init__(self, port, *, name="-", clog=None, busy=None, max_clients=MAX_CLIENTS,
                 refused_hold_s=REFUSED_HOLD_S):
        if not 0 <= port <= 65535:
            raise ValueError(f"local link port {port} is not in 0..65535")
        if max_clients < 1:
            raise ValueError("the local link needs room for at least one client")
        try:
            # bound here, before the bridge starts, so a port in use stops it with a clear error
            self.sock = socket.create_server(("127.0.0.1", port))
        except OSError as e:
            raise OSError(f"local link: cannot listen on 127.0.0.1:{port}: {e.strerror or e}") from e
        self.port = self.sock.getsockname()[1]
        self.url = f"socket://127.0.0.1:{self.port}"
        self.name = name
        self.clog = clog or (lambda code, msg: None)
        self.busy = busy or (lambda: False)
        self.max_clients = max_clients
        self.refused_hold_s = refused_hold_s
        self.link = None
        self.clients = {}            # id -> _Client
        self.refused = 0
        self.pending = {}            # controller txn -> {client id: client txn}
        self.stats = dict.fromkeys(STAT_NAMES, 0)
        self.last_local_update = None   # time.monotonic() of a client's last fota write op
        self._next_id = 0
        self._server = None

    # -- the controller side

    def attach(self, link):
        """Relay to this link (the bridge's link of the moment, once its hello came)."""
        self.link = link
        self._drop_pending()
        for t in ("res", "tel", "evt", "hello"):
            link.subscribe(t, lambda msg, link=link: self._from_controller(link, msg))

    def detach(self, link):
        """The link is gone: commands in flight get no result (their senders retry or time out)."""
        if self.link is link:
            self.link = None
            self._drop_pending()

    def _drop_pending(self):
        self.pending.clear()
        for c in self.clients.values():
            c.txns.clear()

    def _online(self):
        link = self.link
        return link if link is not None and not link.error else None

    def _from_controller(self, link, msg):
        if link is not self.link:
            return
        t = msg["t"]
        if t == "res":
            waiting = self.pending.pop(msg["txn"], None)
            if not waiting:
                if msg["txn"].startswith("L"):
                    self.stats["late_results"] += 1
                return                      # the bridge's own command, or a late result
            for cid, txn in waiting.items():
                c = self.clients.get(cid)
                if c is None:
                    continue
                c.txns.pop(msg["txn"], None)
                if c.send(dict(msg, txn=txn), self.stats):
                    self.stats["results"] += 1
        elif t == "hello" and "fw" not in msg:
            return                          # a request: only the bridge asks the controller
        else:                               # tel, evt, hello: every client hears them
            for c in list(self.clients.values()):
                if c.send(msg, self.stats, bulk=True):
                    self.stats["copied"] += 1

    # -- the client side

    async def serve(self):
        """Accept local clients until cancelled."""
        self._server = await asyncio.start_server(self._on_client, sock=self.sock)
        self.clog("INFO", f"local link on {self.url} (up to {self.max_clients} local clients)")
        try:
            await self._server.serve_forever()
        finally:
            self._server.close()
            for c in list(self.clients.values()):
                c.writer.close()

    def local_update_running(self):
        """A local client pushed an update recently (the controller's stall timeout)."""
        t = self.last_local_update
        return t is not None and time.monotonic() - t < LOCAL_UPDATE_S

    async def _on_client(self, reader, writer):
        self._next_id += 1
        c = _Client(self._next_id, reader, writer)
        if len(self.clients) >= self.max_clients:
            await self._refuse(c)
            return
        self.clients[c.id] = c
        self.stats["clients"] += 1
        self.clog("INFO", f"local link: client {c.id} from {c.peer} connected "
                  f"({len(self.clients)} of {self.max_clients})")
        why = "closed by the client"
        try:
            while True:
                data = await reader.read(4096)
                if not data:
                    break
                for msg in c.deframer.feed(data):
                    self._from_client(c, msg)
                await self._wait_link_backlog()
        except (ConnectionError, OSError) as e:
            why = str(e) or type(e).__name__
        finally:
            self.clients.pop(c.id, None)
            for ctl in list(c.txns):       # nothing stays pending for a client that left
                self._forget(c, ctl)
            bad = {k: v for k, v in c.deframer.stats.items() if v and k not in ("frames_ok", "tx_frames")}
            self.clog("INFO", f"local link: client {c.id} from {c.peer} left ({why}); "
                      f"{c.deframer.stats['frames_ok']} frames relayed"
                      + (f", dropped: {bad}" if bad else ""))
            writer.close()

    def _forget(self, c, ctl):
        c.txns.pop(ctl, None)
        waiting = self.pending.get(ctl)
        if waiting is not None:
            waiting.pop(c.id, None)
            if not waiting:
                del self.pending[ctl]

    async def _wait_link_backlog(self):
        """Pause this client's input while the controller link has a backlog (a FOTA window
        is 4 kB; the controller reads at the line rate). After 5 s it lets the client go on:
        a port that takes nothing at all fails the link, which detaches it."""
        for _ in range(500):
            link = self._online()
            if link is None or link.backlog() <= LINK_BACKLOG:
                return
            await asyncio.sleep(0.01)

    def _from_client(self, c, msg):
        t = msg["t"]
        if t == "cmd":
            self._cmd(c, msg)
        elif t == "hello" and "fw" not in msg:
            if self._answer_hello(c):
                self.stats["hello_answered"] += 1
            else:
                self.stats["offline_drops"] += 1
        elif t in ("hb", "rtt"):
            self.stats["hb_ignored"] += 1
        else:                              # res, tel, evt, hback, a hello with fw: not a host's to send
            self.stats["ignored"] += 1

    def _answer_hello(self, c):
        """Answer a client's hello from the controller's last one; False while it is offline."""
        link = self._online()
        if link is None or link.last_hello is None:
            return False
        c.send(link.last_hello, self.stats)
        return True

    def _refuse_cmd(self, c, txn, msg):
        """The bridge's own V2G-400 result for a command it does not relay."""
        c.send({"v": hl.VERSION, "t": "res", "txn": txn, "ok": False, "code": "V2G-400", "msg": msg,
                "data": {}}, self.stats)

    def _cmd(self, c, msg):
        self.stats["cmds"] += 1
        op = msg["op"]
        if op in FOTA_WRITE_OPS:
            if self.busy():
                self.stats["busy_refusals"] += 1
                self._refuse_cmd(c, msg["txn"], f"{op}: refused by the bridge, an OCPP UpdateFirmware "
                                                "is being installed")
                return
            self.last_local_update = time.monotonic()
        link = self._online()
        if link is None:
            # as with no controller on the line: no answer, the client retries or times out
            self.stats["offline_drops"] += 1
            return
        ctl = controller_txn(msg["txn"])
        if ctl in link.pending:            # cannot happen ("L" prefix); never steal a result
            self.stats["ignored"] += 1
            return
        self.pending.setdefault(ctl, {})[c.id] = msg["txn"]
        c.txns[ctl] = msg["txn"]
        c.txns.move_to_end(ctl)
        while len(c.txns) > CLIENT_PENDING:     # a client that never waits: forget its oldest
            self._forget(c, next(iter(c.txns)))
        out = dict(msg, txn=ctl)
        try:
            hl.encode_frame(out)
        except hl.LinkError as e:
            # only a txn shorter than MIN_CTL_TXN grows; say so rather than leave it waiting
            self._forget(c, ctl)
            self.stats["tx_errors"] += 1
            self._refuse_cmd(c, msg["txn"], f"{op}: refused by the bridge, the command does not fit one "
                                            f"frame under the relayed txn ({e}); use a txn of {MIN_CTL_TXN} "
                                            "characters or more")
            return
        try:
            link.send(out)
        except hl.LinkError as e:
            self.stats["offline_drops"] += 1
            log.debug("local link: cmd not relayed: %s", e)

    async def _refuse(self, c):
        self.stats["clients_refused"] += 1
        why = (f"the bridge's local link already serves {self.max_clients} local clients (its limit); "
               "close one and connect again")
        self.clog("INFO", f"local link: client from {c.peer} refused: {why}")
        if self.refused >= MAX_REFUSED:
            c.writer.close()
            return
        self.refused += 1
        # tell it in the link's own terms, so the tool prints the reason instead of a timeout
        end = time.monotonic() + self.refused_hold_s
        try:
            while (left := end - time.monotonic()) > 0:
                try:
                    data = await asyncio.wait_for(c.reader.read(4096), left)
                except asyncio.TimeoutError:
                    break
                if not data:
                    break
                for msg in c.deframer.feed(data):
                    if msg["t"] == "cmd":
                        self._refuse_cmd(c, msg["txn"], f"{msg['op']}: refused: {why}")
                    elif msg["t"] == "hello" and "fw" not in msg:
                        self._answer_hello(c)
        except (ConnectionError, OSError):
            pass
        finally:
            self.refused -= 1
            c.writer.close()

    def report(self):
        """The relay's state for the diagnostic report."""
        return {"url": self.url, "clients": len(self.clients), "max_clients": self.max_clients,
                "pending": len(self.pending), **self.stats}
