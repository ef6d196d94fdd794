import asyncio

from lab.workload.ticker import Ticker


def test_ticker_reports_while_work_is_pending_and_stops_after() -> None:
    lines: list[str] = []

    async def work() -> None:
        async with Ticker(lines.append, "lookup calls", 3, every_s=0.05) as ticker:
            ticker.done = 1
            await asyncio.sleep(0.3)  # the ticker's first deadline (0.05 s) comes before this one
        seen = len(lines)
        await asyncio.sleep(0.2)
        assert len(lines) == seen, "no ticks after the block"

    asyncio.run(work())
    assert lines and lines[0].startswith("  lookup calls: 1/3 done, ")
