"""The test loop itself: timers fire at their exact virtual time, without real sleeping."""

import asyncio
import time

from conftest import vrun


def test_virtual_clock_jumps_to_timers_without_sleeping() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.sleep(3600)
        return loop.time() - start

    wall = time.perf_counter()
    assert vrun(main()) == 3600
    assert time.perf_counter() - wall < 5
