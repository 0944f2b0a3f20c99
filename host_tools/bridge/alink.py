"""The host link on an asyncio loop: one `AsyncLink` per controller.

Same wire format and message checks as host_tools/link.py (its encoder and
Deframer are used as they are); the difference is the execution model. The
thread-based LinkClient costs two threads per controller, which a site gateway
serving hundreds of controllers from one process cannot afford, so here the
port's file descriptor is watched by the event loop and heartbeats are a task.

Command semantics follow LinkClient.command: the same txn is re-sent on each
retry (the controller answers a repeated txn with its original result).
"""

import asyncio
import logging
import os
import random
import time

import serial

from host_tools import link as hl

log = logging.getLogger(__name__)


class AsyncLink:
    def __init__(self, url: str, *, baudrate=115200, heartbeat_s=hl.HEARTBEAT_S, name=None):
        self.url = url
        self.baudrate = baudrate
        self.heartbeat_s = heartbeat_s
        self.name = name or url
        self.port = None
        self.deframer = hl.Deframer()
        self.subs = {}           # type -> [callback(msg)] run on the loop
        self.pending = {}        # txn -> future
        self.rtt_ms = None
        self.last_hello = None
        self.last_rx = None
        self.error = None
        self.closed = asyncio.Event()
        self._loop = None
        self._fd = None
        self._hb_task = None
        self._hb_seq = 0
        self._thread_reader = None
        self._reader = None
        self._writer = None
        self._txbuf = bytearray()
        self._port_lock = None

    # -- lifecycle

    async def open(self):
        self._loop = asyncio.get_running_loop()
        self._txbuf = bytearray()
        if self.url.startswith("socket://"):
            # asyncio's own socket: pyserial's socket:// uses select(), which fails for
            # descriptors above 1023, i.e. beyond a few hundred controllers per process
            host, _, port = self.url[len("socket://"):].partition(":")
            try:
                self._reader, self._writer = await asyncio.open_connection(host, int(port.split("/")[0]))
            except (OSError, ValueError) as e:
                raise hl.LinkError(f"cannot open {self.url}: {e}") from e
            self._thread_reader = asyncio.ensure_future(self._stream_reader())
        else:
            # the same per-port lock as the CLI tools: a console opened on the bridge's port
            # is refused, instead of both losing frames (tools share via --local-link)
            self._port_lock = hl.PortLock(self.url).acquire()
            try:
                self.port = serial.serial_for_url(self.url, baudrate=self.baudrate, timeout=0,
                                                  write_timeout=2)
            except (serial.SerialException, ValueError, OSError) as e:
                self._port_lock.release()
                raise hl.LinkError(f"cannot open {self.url}: {e}") from e
            try:
                self._fd = self.port.fileno()
            except (AttributeError, NotImplementedError, serial.SerialException, OSError):
                self._fd = None
            if self._fd is not None:
                # read and write the descriptor directly: pyserial's posix read() also
                # goes through select()
                os.set_blocking(self._fd, False)
                self._loop.add_reader(self._fd, self._on_readable)
            else:  # a port type without a descriptor (loop://, rfc2217): poll it
                self._thread_reader = asyncio.ensure_future(self._poll_reader())
        self._write(b"\x00")
        if self.heartbeat_s:
            self._hb_task = asyncio.ensure_future(self._heartbeat())
        return self

    async def close(self):
        if self._hb_task:
            self._hb_task.cancel()
        if self._thread_reader:
            self._thread_reader.cancel()
        if self._fd is not None and self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
            self._fd = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self.port is not None:
            try:
                self.port.close()
            except (serial.SerialException, OSError):
                pass
        if self._port_lock is not None:
            self._port_lock.release()
        self._fail("link closed")
        self.closed.set()

    def _fail(self, why):
        self.error = self.error or why
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(hl.LinkError(f"link to {self.url} closed ({why})"))
        if not self.closed.is_set():
            self.closed.set()

    # -- rx

    def _on_readable(self):
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return
        except OSError as e:
            data, err = b"", e
        else:
            err = None if data else "end of file"
        if not data:
            log.warning("%s: link read failed: %s", self.name, err)
            self._loop.remove_reader(self._fd)
            self._fail(str(err))
            return
        self._feed(data)

    async def _stream_reader(self):
        try:
            while True:
                data = await self._reader.read(4096)
                if not data:
                    break
                self._feed(data)
        except OSError as e:
            self._fail(str(e))
            return
        self._fail("connection closed by the controller")

    async def _poll_reader(self):
        while True:
            data = await self._loop.run_in_executor(None, self.port.read, 256)
            if data:
                self._feed(data)
            else:
                await asyncio.sleep(0.01)

    def _feed(self, data):
        for msg in self.deframer.feed(data):
            self.last_rx = time.monotonic()
            self._dispatch(msg)

    def _dispatch(self, msg):
        t = msg["t"]
        if t == "hback":
            rtt = hl.LinkClient.now_ms() - msg["host_ms"]
            if 0 <= rtt <= 60_000:
                self.rtt_ms = rtt
                self._send_quiet({"t": "rtt", "ms": rtt})
        elif t == "res":
            fut = self.pending.get(msg["txn"])
            if fut is not None and not fut.done():
                fut.set_result(msg)
        elif t == "hello" and "fw" in msg:
            self.last_hello = msg
        for fn in list(self.subs.get(t, ())):
            try:
                fn(msg)
            except Exception:
                log.exception("%s: %s subscriber failed", self.name, t)

    def subscribe(self, t, fn):
        self.subs.setdefault(t, []).append(fn)

    # -- tx

    def _write(self, data):
        if self.error:
            raise hl.LinkError(f"link to {self.url} is not open ({self.error})")
        if self._writer is not None:
            self._writer.write(data)
            return
        if self._fd is None:
            if self.port is None:
                raise hl.LinkError(f"link to {self.url} is not open")
            try:
                self.port.write(data)
            except (serial.SerialException, OSError) as e:
                raise hl.LinkError(f"write to {self.url} failed: {e}") from e
            return
        if self._txbuf:           # earlier bytes still waiting: keep the order
            self._txbuf += data
            return
        try:
            n = os.write(self._fd, data)
        except BlockingIOError:
            n = 0
        except OSError as e:
            raise hl.LinkError(f"write to {self.url} failed: {e}") from e
        if n < len(data):
            self._txbuf += data[n:]
            self._loop.add_writer(self._fd, self._flush)

    def _flush(self):
        try:
            n = os.write(self._fd, self._txbuf)
        except BlockingIOError:
            return
        except OSError as e:
            self._loop.remove_writer(self._fd)
            self._fail(str(e))
            return
        del self._txbuf[:n]
        if not self._txbuf:
            self._loop.remove_writer(self._fd)

    def backlog(self):
        """Bytes written but not yet taken by the port (the local link pauses its clients on it)."""
        n = len(self._txbuf)
        if self._writer is not None:
            n += self._writer.transport.get_write_buffer_size()
        return n

    def send(self, msg):
        if "v" not in msg:
            msg = {"v": hl.VERSION, **msg}
        self._write(hl.encode_frame(msg))
        self.deframer.stats["tx_frames"] += 1

    def _send_quiet(self, msg):
        try:
            self.send(msg)
        except hl.LinkError as e:
            log.debug("%s: %s not sent: %s", self.name, msg.get("t"), e)

    async def _heartbeat(self):
        first = True
        while True:
            self._hb_seq += 1
            self._send_quiet({"t": "hb", "seq": self._hb_seq, "host_ms": hl.LinkClient.now_ms()})
            # after the first beat, a random phase: a site gateway's links connect together, and
            # in step their heartbeats would come in bursts that delay everything else
            await asyncio.sleep(self.heartbeat_s * (random.random() if first else 1))
            first = False

    async def hello(self, timeout=2.0):
        fut = self._loop.create_future()

        def catch(m):
            if "fw" in m and not fut.done():
                fut.set_result(m)

        self.subscribe("hello", catch)
        try:
            self.send({"t": "hello"})
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError as e:
            raise hl.LinkTimeout(f"no hello from the controller on {self.url} within {timeout:g} s") from e
        finally:
            self.subs["hello"].remove(catch)

    async def command(self, op, args=None, txn=None, *, timeout=3.0, retries=2) -> hl.CommandResult:
        txn = txn or hl.new_txn()
        if not 1 <= len(txn) <= hl.TXN_MAX_LEN:
            raise hl.LinkError(f"txn length {len(txn)} not in 1..{hl.TXN_MAX_LEN}")
        if txn in self.pending:
            raise hl.LinkError(f"txn {txn} is already waiting for its result")
        fut = self._loop.create_future()
        self.pending[txn] = fut
        try:
            for attempt in range(retries + 1):
                t0 = time.monotonic()
                self.send({"t": "cmd", "txn": txn, "op": op, "args": args or {}})
                try:
                    res = await asyncio.wait_for(asyncio.shield(fut), timeout)
                except asyncio.TimeoutError:
                    log.info("%s: no result for %s (txn %s), try %d of %d", self.name, op, txn,
                             attempt + 1, retries + 1)
                    continue
                return hl.CommandResult(txn, res["ok"], res["code"], res["msg"], res["data"],
                                        round((time.monotonic() - t0) * 1000, 1))
            raise hl.LinkTimeout(f"no result for {op} (txn {txn}) after {retries + 1} tries of {timeout:g} s")
        finally:
            self.pending.pop(txn, None)
