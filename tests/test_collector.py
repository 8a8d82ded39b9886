"""The cyclic collector around a large run (flowdsl/_base/collector.py): what exists when a
run of at least FREEZE_MIN tasks starts is frozen (kept out of the collector's scans) until
the last such run ends, and handed back then, whatever way the run ends; small runs and
programs that froze objects themselves are left as they are."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from support import run, tl

import flowdsl
from flowdsl._base import collector


@pytest.fixture(autouse=True)
def _unfrozen() -> Iterator[None]:
    gc.unfreeze()  # (another test's leftovers would make every count below wrong)
    yield
    assert gc.get_freeze_count() == 0
    gc.unfreeze()


seen: list[int] = []


@tl
async def probe(i: int) -> int:
    if i % 100 == 0:  # (the count walks every frozen object: a few of the tasks look)
        seen.append(gc.get_freeze_count())
    return i


@tl
async def broken(x: Any = None) -> int:
    raise ValueError("no")


def _wide(n: int) -> Any:
    return flowdsl.parallel(*[probe(i) for i in range(n)])


def test_a_large_run_is_frozen_while_it_runs_and_handed_back() -> None:
    seen.clear()
    assert run(_wide(collector.FREEZE_MIN)).ok
    assert len(seen) == collector.FREEZE_MIN // 100 and min(seen) > 0
    assert gc.get_freeze_count() == 0


def test_a_small_run_leaves_the_collector_alone() -> None:
    seen.clear()
    assert run(_wide(collector.FREEZE_MIN - 1)).ok
    assert set(seen) == {0}


def test_a_failed_run_hands_the_objects_back() -> None:
    seen.clear()
    r = run(_wide(collector.FREEZE_MIN) >> broken())
    assert not r.ok and min(seen) > 0
    assert gc.get_freeze_count() == 0


def test_a_program_that_froze_objects_keeps_its_freeze() -> None:
    """A program that froze its objects (as before a fork) finds them frozen after a run:
    the run neither adds to that freeze nor undoes it."""
    keep = [[i] for i in range(100)]  # noqa: F841 (objects of the program's own)
    gc.freeze()
    before = gc.get_freeze_count()
    try:
        seen.clear()
        assert run(_wide(collector.FREEZE_MIN)).ok
        # (Frozen objects that die leave the count: it can only fall unless someone
        # freezes more, and a run's freeze would add its plan and core, thousands.)
        assert min(seen) > 0 and max(seen) <= before
        assert 0 < gc.get_freeze_count() <= before
    finally:
        gc.unfreeze()


def test_runs_side_by_side_hold_the_freeze_until_the_last_ends() -> None:
    counts: dict[str, int] = {}

    @tl
    async def slow(i: int) -> int:
        await anyio.sleep(0.2)
        return i

    async def main() -> None:
        async def short() -> None:
            assert (await flowdsl.arun(_wide(collector.FREEZE_MIN), history=False)).ok
            counts["after the short run"] = gc.get_freeze_count()

        async def long() -> None:
            flow = flowdsl.parallel(*[slow(i) for i in range(collector.FREEZE_MIN)])
            assert (await flowdsl.arun(flow, history=False)).ok

        async with anyio.create_task_group() as tg:
            tg.start_soon(long)
            tg.start_soon(short)

    anyio.run(main)
    assert counts["after the short run"] > 0  # the long run still holds it
    assert gc.get_freeze_count() == 0
