"""A site gateway's links heartbeat out of step.

Links that connect together would otherwise send their heartbeats (and status polls) in one
burst every period, holding up CSMS commands behind a thousand frames; the bench showed p99
swing from 25 ms to 145 ms at 1,000 controllers before the phases were spread.
"""

import asyncio
import time

from host_tools.bridge.alink import AsyncLink


def test_heartbeats_of_links_started_together_spread_over_the_period():
    period = 0.4
    sent = {}

    async def run():
        links = [AsyncLink("loop://", heartbeat_s=period, name="L{}".format(i)) for i in range(40)]
        t0 = time.monotonic()
        for lk in links:
            lk._send_quiet = (lambda name: lambda msg: sent.setdefault(name, []).append(
                time.monotonic() - t0))(lk.name)
        tasks = [asyncio.ensure_future(lk._heartbeat()) for lk in links]
        await asyncio.sleep(2.5 * period)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(run())
    assert len(sent) == 40
    first = [beats[0] for beats in sent.values()]
    assert max(first) < 0.05                     # the first beat goes out at once
    second = sorted(beats[1] for beats in sent.values() if len(beats) > 1)
    assert len(second) >= 30
    # spread over the period rather than all together: the middle half spans a good part of it
    q1, q3 = second[len(second) // 4], second[3 * len(second) // 4]
    assert q3 - q1 > period / 4
    # and each link keeps its own period after that
    for beats in sent.values():
        for a, b in zip(beats[1:], beats[2:]):
            assert abs((b - a) - period) < 0.1
