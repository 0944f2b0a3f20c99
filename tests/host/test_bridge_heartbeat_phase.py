"""A site gateway's links heartbeat out of step.

Links that connect together would otherwise send their heartbeats (and status polls) in one
burst every period, holding up CSMS commands behind a thousand frames; the bench showed p99
swing from 25 ms to 145 ms at 1,000 controllers before the phases were spread.
"""

import asyncio

from host_tools.bridge.alink import AsyncLink


class SimulatedTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock moves only when it would wait: each wait for the next timer
    is taken at once and added to the clock, so the beats' times are exact and a busy machine
    cannot shift them."""

    def __init__(self):
        super().__init__()
        self.now = 0.0
        select = self._selector.select

        def no_wait(timeout=None):
            if timeout:
                self.now += timeout
            return select(0)
        self._selector.select = no_wait

    def time(self):
        return self.now


def test_heartbeats_of_links_started_together_spread_over_the_period():
    period = 0.4
    sent = {}

    async def run():
        loop = asyncio.get_running_loop()
        links = [AsyncLink("loop://", heartbeat_s=period, name="L{}".format(i)) for i in range(40)]
        for lk in links:
            lk._send_quiet = (lambda name: lambda msg: sent.setdefault(name, []).append(loop.time()))(lk.name)
        tasks = [asyncio.ensure_future(lk._heartbeat()) for lk in links]
        await asyncio.sleep(2.5 * period)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    with asyncio.Runner(loop_factory=SimulatedTimeLoop) as runner:
        runner.run(run())
    assert len(sent) == 40
    first = [beats[0] for beats in sent.values()]
    assert max(first) == 0                       # the first beat goes out at once
    second = sorted(beats[1] for beats in sent.values() if len(beats) > 1)
    assert len(second) >= 30
    # spread over the period rather than all together: the middle half spans a good part of it
    q1, q3 = second[len(second) // 4], second[3 * len(second) // 4]
    assert q3 - q1 > period / 4
    # and each link keeps its own period after that
    for beats in sent.values():
        for a, b in zip(beats[1:], beats[2:]):
            assert abs((b - a) - period) < 1e-9
