"""What the OCPP 2.x and 1.6 stations share around their CSMS session: the offline queue of
transaction messages with its dead-letter folder, and the supervisor of the background loops.

The messages themselves and the sender's retry rules differ by version (2.x counts
MessageAttempts per E13; 1.6 retries with a back-off), so each version's `Transactions`
keeps its own sender and names its messages through `_describe`."""

import asyncio

from host_tools.bridge.backoff import Backoff
from host_tools.bridge.queue import DiskQueue, write_json_atomic

# CALLERROR codes that say the message itself is wrong: sending it again cannot succeed
# (both spellings of the occurrence/formation codes are in use by CSMSs)
PERMANENT_ERRORS = frozenset(("FormatViolation", "FormationViolation", "PropertyConstraintViolation",
                              "OccurrenceConstraintViolation", "OccurenceConstraintViolation",
                              "TypeConstraintViolation", "ProtocolError", "NotImplemented", "NotSupported"))
QUEUE_RETRY_MAX_S = 60.0
# errors.md has no numbered code for a lost queued message; the log names it so it can be found
QUEUE_FULL_CODE = "ERR_V2G_TX_QUEUE_FULL"
LOOP_RESTART_S = 1.0


class OfflineQueue:
    """The disk queue of transaction messages (an outage or a bridge restart loses none) and
    its dead-letter folder tx_queue/dead/, where a message the CSMS can never accept is kept
    for billing, never deleted, so the ones behind it go out."""

    def _open_queue(self, ctx, state_dir):
        self.ctx = ctx
        self.queue = DiskQueue(state_dir / "tx_queue", on_drop=self._queue_dropped)
        self.dead_letter = state_dir / "tx_queue" / "dead"
        self.queue_retry = Backoff(1.0, 0.0, 6)    # waits after a transient refusal (capped at 60 s)
        self._kick = asyncio.Event()

    def _describe(self, item):
        """The message named for the log, e.g. "TransactionEvent seqNo 3 of tx-1"."""
        raise NotImplementedError

    def kick(self):
        """Have the sender look at the queue now."""
        self._kick.set()

    async def _kicked(self):
        await self._kick.wait()
        self._kick.clear()

    def _queue_dropped(self, n, item):
        """The queue was full and its oldest message went: billing data is lost, so this is
        an error line (and a counter in the diagnostic report)."""
        dropped = self.ctx.count("tx_events_dropped")
        what = "unreadable message" if item is None else self._describe(item)
        self.ctx.event(QUEUE_FULL_CODE, f"offline queue full ({self.queue.max_items} messages): "
                       f"oldest dropped: {what} (queue file {n:012d}); {dropped} dropped so far")

    def _dead_record(self, item):
        """What tx_queue/dead/ keeps of a message beside the reason."""
        return {"payload": item}

    def _set_aside(self, n, item, why):
        self.dead_letter.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.dead_letter / f"{n:012d}.json", {"reason": why, **self._dead_record(item)})
        self.queue.pop(n)
        self.ctx.count("tx_events_dead")
        self.ctx.event("V2G-400", f"{self._describe(item)} refused by the CSMS ({why}): "
                       f"moved to {self.dead_letter.name}/{n:012d}.json")

    async def _retry_later(self, item, why):
        """A failure the CSMS or the bridge may get over: the message stays at the head and
        is tried again after the back-off."""
        wait = min(self.queue_retry.next(), QUEUE_RETRY_MAX_S)
        self.ctx.event("V2G-400", f"{self._describe(item)} not sent ({why}); kept, retry in {wait:g} s")
        await asyncio.sleep(wait)


class Loops:
    """The station's background loops (the queue's sender, the profile ticker), kept running:
    one that ended for any reason is logged and started again LOOP_RESTART_S later."""

    def __init__(self, ctx, loops, after_start=None):
        self.ctx = ctx
        self._loops = loops             # (name, coroutine function) pairs
        self._after_start = after_start
        self.tasks = {}
        self._stopping = False

    def supervise(self):
        """(Re)start every loop that is not running."""
        for name, fn in self._loops:
            t = self.tasks.get(name)
            if t is not None and not t.done():
                continue
            if t is not None:
                why = "ended" if t.cancelled() or t.exception() is None else repr(t.exception())
                self.ctx.event("V2G-400", f"{name} stopped ({why}), restarted")
            t = self.tasks[name] = asyncio.ensure_future(fn())
            t.add_done_callback(self.loop_ended)
        if self._after_start is not None:
            self._after_start()

    def loop_ended(self, task):
        if self._stopping or task.cancelled():
            return
        asyncio.get_running_loop().call_later(LOOP_RESTART_S, self.supervise)

    async def stop(self):
        self._stopping = True
        tasks = [t for t in self.tasks.values() if not t.done()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.tasks.clear()
        self._stopping = False
