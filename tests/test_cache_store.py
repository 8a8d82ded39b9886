"""Issue 24: the result cache's own store. Exact round trips (a Hypothesis property test and
the values that used to come back changed), no code from the file (planted pickle rows,
forged signatures), a failed write never costing the result (a full disk through a file-size
limit), bounded look-ups and LRU eviction, one computation per key, refresh, and the
``flowdsl cache`` commands on good, corrupt and locked files."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import pickle
import sqlite3
import subprocess
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import MODES, tl

import flowdsl
from flowdsl import Cache, CacheStore, TaskStatus
from flowdsl._base import codec

S = TaskStatus


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same type all the way down (NaN equal to NaN)."""
    stack = [(a, b)]
    while stack:
        x, y = stack.pop()
        if type(x) is not type(y):
            return False
        if isinstance(x, float) and math.isnan(x):
            if not math.isnan(y):
                return False
            continue
        if isinstance(x, (list, tuple)):
            if len(x) != len(y):
                return False
            stack.extend(zip(x, y))
        elif isinstance(x, dict):
            if list(x) != list(y) or not all(type(k) is type(j) for k, j in zip(x, y)):
                return False
            stack.extend((x[k], y[k]) for k in x)
        elif x != y:
            return False
    return True


# -- exact round trips ----------------------------------------------------------------------

_keys = st.one_of(st.text(max_size=8), st.integers(), st.booleans(), st.none(),
                  st.floats(allow_nan=False), st.tuples(st.integers(), st.text(max_size=3)),
                  st.frozensets(st.integers(), max_size=3))
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(), st.binary(max_size=16),
    st.decimals(allow_nan=False, allow_infinity=False), st.datetimes(),
    st.datetimes(timezones=st.just(dt.timezone(dt.timedelta(hours=-3)))), st.dates(),
    st.times(), st.timedeltas(), st.datetimes().map(lambda d: d.replace(fold=1)),
    st.uuids(), st.complex_numbers(allow_nan=False))
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.tuples(inner, inner),
        st.dictionaries(_keys, inner, max_size=4),
        st.sets(st.one_of(st.integers(), st.text(max_size=4)), max_size=4),
        st.frozensets(st.integers(), max_size=4)),
    max_leaves=20)


class TestRoundTrips:
    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(_values)
    def test_property_encode_decode_is_exact(self, value: Any) -> None:
        """Item 2: random nested values come back equal and of the same types (dict key
        order and key types too)."""
        assert same(value, codec.decode(codec.encode(value)))

    @pytest.mark.parametrize("value", [
        {1: "a"}, (1, 2), {1: "x", "1": "y"}, {True: 1, None: 2, 1.5: 3}, {"$t": [1]},
        {"$d": 1, "a": 2}, [{1, 2}, frozenset({3})], b"\x00\xff", Decimal("1.10"),
        Decimal("-0"), dt.datetime(2024, 2, 29, 12, 0, tzinfo=dt.timezone.utc), -0.0,
        float("inf"), uuid.UUID(int=7), {(1, "a"): [dt.date(2020, 1, 1), dt.timedelta(3)]},
        [[[[[]]]]], "$d"])
    def test_values_that_used_to_change_come_back_as_they_were(self, value: Any) -> None:
        """The cases the issue found (int keys, tuples, mixed keys) and the tagged types."""
        assert same(value, codec.decode(codec.encode(value)))

    @pytest.mark.parametrize(("value", "why"), [
        (object(), "builtins.object"), ({"a": [1, object()]}, "builtins.object"),
        (S.COMPLETED, "TaskStatus"), (flowdsl.Secret("x" * 8), "Secret"),
        (dt.datetime(2020, 1, 1, tzinfo=ZoneInfo("Europe/Paris")), "only fixed offsets"),
        (True.__class__, "builtins.type")])
    def test_what_cannot_come_back_exactly_is_refused(self, value: Any, why: str) -> None:
        """An enum is not an str when it comes back; an unknown object has no encoding."""
        with pytest.raises(codec.NotExact, match=why):
            codec.encode(value)

    def test_a_value_holding_itself_is_refused_and_depth_is_no_problem(self) -> None:
        """Cycles are refused; a deep value is walked without recursion."""
        loop: list[Any] = []
        loop.append(loop)
        with pytest.raises(codec.NotExact, match="contains itself"):
            codec.encode(loop)
        deep: Any = 1
        for _ in range(100_000):
            deep = [deep]
        try:
            back = codec.decode(codec.encode(deep))
        except codec.NotExact as exc:  # the JSON text step may refuse: never a crash
            assert "deeply" in str(exc)
        else:
            for _ in range(100_000):
                back = back[0]
            assert back == 1

    @pytest.mark.parametrize("mode", MODES)
    def test_a_hit_returns_what_the_tool_returned(self, mode: str) -> None:
        """Item 2 end to end: a cached run gives the same answer as an uncached one."""
        out = {1: "x", "1": "y", "t": (1, 2), "s": {3}, "b": b"z",
               "when": dt.datetime(2020, 1, 1), "d": Decimal("0.1")}
        t = tl(lambda: out, cache=True)
        first = flowdsl.run(t().named("t"), mode=mode)
        second = flowdsl.run(t().named("t"), mode=mode)
        assert second.tasks["t"].status is S.CACHED
        assert same(first.output, second.output) and same(second.output, out)


# -- no code from the file ------------------------------------------------------------------

EVIL_MARK = "pwned.txt"


class Evil:
    """Unpickling this writes a file: the proof that a row ran code."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (Path(self.path).write_text, ("ran",))


def _sign(db: Path, tool: str, serializer: str, payload: bytes) -> bytes:
    """The HMAC the store would give the row of ``tool`` (using the key file, as someone
    holding it could)."""
    import hashlib
    import hmac

    c = sqlite3.connect(db)
    (key,) = c.execute("SELECT key FROM entries WHERE tool=?", (tool,)).fetchone()
    c.close()
    secret = Path(str(db) + ".key").read_bytes()
    return hmac.new(secret, b"\0".join((key.encode(), serializer.encode(), payload)),
                    hashlib.sha256).digest()


def _plant(db: Path, tool: str, payload: bytes, serializer: str, mac: bytes | None) -> None:
    c = sqlite3.connect(db)
    with c:
        n = c.execute("UPDATE entries SET serializer=?, value=?, mac=?, size=? WHERE tool=?",
                      (serializer, payload, mac, len(payload), tool)).rowcount
    c.close()
    assert n == 1


class TestNoCodeFromTheFile:
    def test_a_planted_pickle_row_for_a_json_tool_is_refused(self, tmp_path: Path) -> None:
        """Item 3: a JSON tool's row rewritten as pickle is never unpickled; the task
        recomputes, says why, and overwrites the row."""
        db = tmp_path / "c.db"
        calls: list[int] = []
        t = tl(lambda: calls.append(1) or 5, name="plain", cache=True)
        flowdsl.run(t().named("t"), cache=str(db))
        mark = tmp_path / EVIL_MARK
        _plant(db, "plain", pickle.dumps(Evil(str(mark))), "pickle", None)
        r = flowdsl.run(t().named("t"), cache=str(db))
        assert not mark.exists()
        assert r.tasks["t"].status is S.COMPLETED and r.output == 5 and len(calls) == 2
        assert "refused: stored with serializer 'pickle'" in r.tasks["t"].reason
        assert flowdsl.run(t().named("t"), cache=str(db)).tasks["t"].status is S.CACHED

    def test_pickle_rows_are_signed_and_a_forged_one_is_refused(self, tmp_path: Path) -> None:
        """Item 3: a pickle tool's rows carry an HMAC under the key in the 0600 file beside
        the store; a row replaced without the key is refused, never unpickled."""
        db = tmp_path / "c.db"
        t = tl(lambda: ({1, 2}, Path("x")), name="pk", cache=Cache(serializer="pickle"))
        flowdsl.run(t().named("t"), cache=str(db))
        key = Path(str(db) + ".key")
        assert key.stat().st_mode & 0o777 == 0o600 and db.stat().st_mode & 0o777 == 0o600
        assert flowdsl.run(t().named("t"), cache=str(db)).output == ({1, 2}, Path("x"))
        mark = tmp_path / EVIL_MARK
        evil = pickle.dumps(Evil(str(mark)))
        for mac in (None, b"\0" * 32):  # no signature, a wrong one
            _plant(db, "pk", evil, "pickle", mac)
            r = flowdsl.run(t().named("t"), cache=str(db))
            assert not mark.exists()
            assert r.tasks["t"].status is S.COMPLETED
            assert "signature does not match" in r.tasks["t"].reason
        # A copy of the file without its key (another user's, a restored backup): refused.
        other = tmp_path / "copy.db"
        src, dst = sqlite3.connect(db), sqlite3.connect(other)
        src.backup(dst)
        src.close()
        dst.close()
        r = flowdsl.run(t().named("t"), cache=str(other))
        assert r.tasks["t"].status is S.COMPLETED and "signature" in r.tasks["t"].reason


# -- a failed write never costs the result ---------------------------------------------------

FULL_DISK = """
import os, resource, signal, sys, warnings
import flowdsl

@flowdsl.tool(cache=True, registry=False)
def big(n):
    return "x" * n

store = flowdsl.CacheStore(sys.argv[1])
flowdsl.run(big(10).named("warm"), cache=store, history=False)  # the file exists, in WAL
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    r = flowdsl.run(big(1_000_000).named("big"), cache=store, history=False)
print("status", r.status.value, len(r.output))
print("cache_error", type(r.cache_error).__name__, bool(r.cache_error))
print("warned", [w.category.__name__ for w in caught])
print("to_dict", r.to_dict()["cache_error"] is not None)
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
again = flowdsl.run(big(1_000_000).named("big"), cache=store, history=False)
third = flowdsl.run(big(1_000_000).named("big"), cache=store, history=False)
print("next", again.status.value, again.cache_error, third.tasks["big"].status.value)
"""


class TestFailedWrites:
    @pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
    def test_a_full_disk_keeps_the_result(self, tmp_path: Path) -> None:
        """Item 6: with a file-size limit the cache write fails; the run still returns its
        result with cache_error set and a CacheWarning, and the next run works."""
        script = tmp_path / "full.py"
        script.write_text(FULL_DISK)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        done = subprocess.run([sys.executable, str(script), str(tmp_path / "c.db")], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        lines = dict(line.split(" ", 1) for line in done.stdout.splitlines())
        assert lines["status"] == "completed 1000000"
        assert lines["cache_error"] == "CacheWarning True"
        assert "CacheWarning" in lines["warned"]
        assert lines["to_dict"] == "True"
        assert lines["next"] == "completed None cached"

    def test_a_store_that_cannot_be_opened_is_a_warning(self, tmp_path: Path) -> None:
        """A corrupt cache file: the run computes everything, returns its result and says
        why the cache was not used."""
        db = tmp_path / "c.db"
        db.write_bytes(b"this is not a database" * 100)
        t = tl(lambda: 1, cache=True)
        with pytest.warns(flowdsl.CacheWarning, match="damaged or not a flowdsl cache"):
            r = flowdsl.run(t().named("t"), cache=str(db))
        assert r.ok and r.output == 1 and "result cache" in str(r.cache_error)


# -- bounded and fast ------------------------------------------------------------------------


class Counting:
    """A store wrapper that records each look-up's keys."""

    def __init__(self, store: CacheStore) -> None:
        self.store = store
        self.lookups: list[list[str]] = []
        self.commits = 0

    def lookup(self, keys: Any, now: float) -> Any:
        self.lookups.append(list(keys))
        return self.store.lookup(keys, now)

    def commit(self, *args: Any) -> int:
        self.commits += 1
        return self.store.commit(*args)

    def mac_key(self) -> bytes:
        return self.store.mac_key()


class TestBounded:
    def test_static_keys_in_one_query_a_maps_children_in_one(self, tmp_path: Path) -> None:
        """Item 7: keys known at plan time in one look-up before the first task; a mapped
        task's children in one look-up; one commit at the end; never a whole tool."""
        store = Counting(CacheStore(tmp_path / "c.db"))
        sq = tl(lambda x: x * x, name="sq", cache=True)
        src = tl(lambda: [1, 2, 3, 4], name="src")

        def flow() -> Any:
            s = src().named("src")
            return (sq(1).named("a") | sq(2).named("b") | s) >> sq.map(s).named("m")

        for mode in ("sequential", "parallel"):
            store.lookups.clear()
            flowdsl.run(flow(), cache=store, mode=mode)  # type: ignore[arg-type]
            # The children's keys sq(1), sq(2) were a and b's: only 3 and 4 are asked.
            assert [len(k) for k in store.lookups] == [2, 2], mode
        assert store.commits == 2
        r = flowdsl.run(flow(), cache=store)  # type: ignore[arg-type]
        assert r.tasks["m[3]"].status is S.CACHED and r.output == [1, 4, 9, 16]
        store.store.close()

    def test_runtime_keys_are_looked_up_in_batches(self, tmp_path: Path) -> None:
        """Keys known only at run time, ready at the same moment, share one query."""
        store = Counting(CacheStore(tmp_path / "c.db"))
        src = tl(lambda: 3, name="src")
        inc = tl(lambda x, k: x + k, name="inc", cache=True)
        s = src().named("src")
        flow = s >> (inc(s, 1).named("i1") | inc(s, 2).named("i2") | inc(s, 3).named("i3"))
        flowdsl.run(flow, cache=store)  # type: ignore[arg-type]
        assert [len(k) for k in store.lookups] == [3]
        store.store.close()

    def test_lru_eviction_by_last_hit(self, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
        """Item 7: over max_entries the least recently hit entries go; a hit refreshes an
        entry's place; totals are kept without counting the table."""
        monkeypatch.setattr("flowdsl._run.caching.USE_GRANULARITY", 0.0)  # to the instant
        store = CacheStore(tmp_path / "c.db", max_entries=3)
        t = tl(lambda x: x, name="ident", cache=True)
        for x in (1, 2, 3):
            flowdsl.run(t(x).named("t"), cache=store)
            time.sleep(0.01)
        flowdsl.run(t(1).named("t"), cache=store)  # 1 is now the most recently hit
        time.sleep(0.01)
        flowdsl.run(t(4).named("t"), cache=store)  # evicts 2, the least recently hit
        hits = {x: flowdsl.run(t(x).named("t"), cache=store).tasks["t"].status
                for x in (1, 3, 4)}
        assert hits == {1: S.CACHED, 3: S.CACHED, 4: S.CACHED}
        st_ = store.stats()
        assert st_["entries"] == 3 and st_["tools"]["ident"]["entries"] == 3
        assert flowdsl.run(t(2).named("t"), cache=store).tasks["t"].status is S.COMPLETED
        assert store.stats()["entries"] == 3
        store.close()

    def test_hits_on_fresh_entries_write_no_rows(self, tmp_path: Path) -> None:
        """A hit on an entry used within the last minute only counts (per tool): the run's
        end writes no entry row, and the hit count is still exact."""
        store = Counting(CacheStore(tmp_path / "c.db"))
        t = tl(lambda x: x, name="fresh", cache=True)
        flowdsl.run(t(1).named("t"), cache=store)  # type: ignore[arg-type]
        before = store.store.entries()
        for _ in range(3):
            flowdsl.run(t(1).named("t"), cache=store)  # type: ignore[arg-type]
        assert store.store.entries() == before  # last use unchanged (within the minute)
        assert store.store.stats()["tools"]["fresh"]["hits"] == 3
        store.store.close()

    def test_max_bytes(self, tmp_path: Path) -> None:
        """Over max_bytes, the least recently hit go until the payloads fit."""
        store = CacheStore(tmp_path / "c.db", max_bytes=2500)
        t = tl(lambda n: "x" * 1000 + str(n), name="blob", cache=True)
        for n in range(5):
            flowdsl.run(t(n).named("t"), cache=store)
            time.sleep(0.01)
        s = store.stats()
        assert s["bytes"] <= 2500 and s["entries"] == 2
        assert {e["size"] for e in store.entries()} == {1003}
        assert s["bytes"] == sum(e["size"] for e in store.entries())
        store.close()


# -- one computation per key -----------------------------------------------------------------


class TestOneComputationPerKey:
    @pytest.mark.parametrize("mode", MODES)
    def test_identical_calls_compute_once(self, mode: str) -> None:
        """Item 8: identical calls in one run compute once; the others wait and end
        cached, in every mode."""
        calls: list[int] = []

        def slow(x: int) -> int:
            calls.append(x)
            time.sleep(0.2)
            return x * 2

        t = tl(slow, cache=True)
        r = flowdsl.run(t(5).named("a") | t(5).named("b") | t(5).named("c"), mode=mode)
        assert calls == [5], mode
        statuses = sorted(r.tasks[k].status.value for k in "abc")
        assert statuses == ["cached", "cached", "completed"]
        assert all(r.outputs[k] == 10 for k in "abc")
        waiting = [r.tasks[k].reason for k in "abc" if r.tasks[k].status is S.CACHED]
        assert all("identical call in this run" in w for w in waiting)

    def test_a_failed_first_call_lets_the_waiter_compute(self) -> None:
        """If the call being waited for fails, the waiter runs the tool itself."""
        calls: list[int] = []

        def flaky(x: int) -> int:
            calls.append(x)
            time.sleep(0.1)
            if len(calls) == 1:
                raise ValueError("first fails")
            return x

        t = tl(flaky, cache=True)
        r = flowdsl.run(t(1).named("a") | t(1).named("b"), continue_on_error=True)
        assert len(calls) == 2
        assert sorted(r.tasks[k].status.value for k in "ab") == ["completed", "failed"]

    def test_map_children_with_equal_elements(self) -> None:
        """Equal elements of one map compute once."""
        calls: list[int] = []
        t = tl(lambda x: calls.append(x) or x, cache=True)
        r = flowdsl.run(t.map([1, 1, 2, 1]).named("m"))
        assert sorted(calls) == [1, 2] and r.output == [1, 1, 2, 1]

    def test_refresh_recomputes_one_task_and_overwrites(self) -> None:
        """Item 8: .with_options(cache="refresh") recomputes that task only and writes its
        new output; the other cached task still hits."""
        n = [0]

        def count(tag: str) -> int:
            n[0] += 1
            return n[0]

        t = tl(count, cache=True)
        flowdsl.run(t("a").named("a") | t("b").named("b"))
        r = flowdsl.run(t("a").named("a").with_options(cache="refresh") | t("b").named("b"))
        assert r.tasks["a"].status is S.COMPLETED and r.tasks["b"].status is S.CACHED
        assert r.outputs["a"] == 3
        again = flowdsl.run(t("a").named("a"))
        assert again.tasks["a"].status is S.CACHED and again.output == 3


# -- the command line -----------------------------------------------------------------------


def _cli(*args: str) -> Any:
    pytest.importorskip("typer")
    from typer.testing import CliRunner

    from flowdsl._report import cli

    return CliRunner().invoke(cli.app, ["cache", *args])


class TestCli:
    def test_stats_prune_list(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """stats shows entries, bytes and the hit rate per tool; prune evicts down to the
        given bound; list is newest-used first."""
        monkeypatch.setattr("flowdsl._run.caching.USE_GRANULARITY", 0.0)
        db = tmp_path / "c.db"
        t = tl(lambda x: x, name="ident", cache=True)
        for x in (1, 2, 3):
            flowdsl.run(t(x).named("t"), cache=str(db))
            time.sleep(0.01)
        flowdsl.run(t(1).named("t"), cache=str(db))
        res = _cli("--cache", str(db), "stats", "--json")
        assert res.exit_code == 0, res.output
        s = json.loads(res.output)
        assert s["entries"] == 3
        assert s["tools"]["ident"] | {"bytes": 0} == {
            "entries": 3, "bytes": 0, "hits": 1, "misses": 3, "hit_rate": 0.25}
        assert "25%" in _cli("--cache", str(db), "stats").output
        res = _cli("--cache", str(db), "prune", "--max-entries", "1", "--json")
        assert json.loads(res.output) == {"expired": 0, "evicted": 2}
        rows = json.loads(_cli("--cache", str(db), "list", "--json").output)
        assert len(rows) == 1 and rows[0]["used_at"] > rows[0]["created_at"]  # the hit one

    def test_corrupt_file_exits_2_with_a_message(self, tmp_path: Path) -> None:
        """Item 7: a corrupt file or a history file: a clear message, exit 2, no
        traceback."""
        bad = tmp_path / "bad.db"
        bad.write_bytes(b"garbage" * 1000)
        hist = tmp_path / "h.db"
        flowdsl.run(tl(lambda: 1)().named("x"), history=str(hist))
        for path, says in ((bad, "damaged or not a flowdsl cache"),
                           (hist, "not a flowdsl result cache")):
            for cmd in (["list"], ["stats"], ["prune"], ["clear"]):
                res = _cli("--cache", str(path), *cmd)
                assert res.exit_code == 2, (cmd, res.output)
                assert says in res.output and "Traceback" not in res.output
                assert res.output.count(str(path)) == 1  # said once, not wrapped twice
                assert res.exception is None or isinstance(res.exception, SystemExit)

    def test_locked_file_exits_2(self, tmp_path: Path) -> None:
        """Another process holding the write lock past --wait: exit 2, saying so."""
        db = tmp_path / "c.db"
        flowdsl.run(tl(lambda: 1, cache=True)().named("x"), cache=str(db))
        holder = sqlite3.connect(db, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            res = _cli("--cache", str(db), "--wait", "0.2", "clear")
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert res.exit_code == 2, res.output
        assert "locked" in res.output and "another process" in res.output

    def test_the_subprocess_prints_no_traceback(self, tmp_path: Path) -> None:
        """The real command line on a corrupt file."""
        bad = tmp_path / "bad.db"
        bad.write_bytes(b"garbage" * 1000)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        done = subprocess.run([sys.executable, "-m", "flowdsl", "cache", "--cache", str(bad),
                               "list"], capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode == 2
        assert "Traceback" not in done.stderr and "result cache" in done.stderr


def test_the_store_is_opened_once_and_private(tmp_path: Path) -> None:
    """Item 1: one store per file in a process (the run reuses its connection); the file is
    0600 in WAL mode."""
    from flowdsl._record.cache import open_cache

    path = tmp_path / "c.db"
    a, b = open_cache(str(path)), open_cache(str(path))
    assert a is b
    flowdsl.run(tl(lambda: 1, cache=True)().named("x"), cache=str(path))
    conn = a._conn
    flowdsl.run(tl(lambda: 2, cache=True)().named("y"), cache=str(path))
    assert a._conn is conn is not None
    assert path.stat().st_mode & 0o777 == 0o600
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    a.close()



def test_cache_benchmark_runs_small() -> None:
    """benchmarks/cache_bench.py on small stores: every figure is there and positive, and
    the hits were all hits (the script asserts so itself)."""
    from benchmarks import cache_bench

    figures = cache_bench.run(small=10, big=300, n=20, repeats=1)
    for size, entries in (("small", 10), ("big", 300)):
        f = figures[size]
        assert f["entries"] == entries and f["hit_vs_noop"] > 0 and f["one_miss_run_ms"] > 0
    assert figures["one_hit_growth"] > 0 and figures["one_miss_growth"] > 0


@pytest.mark.parametrize("payload", [
    b'{"$t": 5}', b'{"$d": [[1]]}', b'{"$s": [[1]]}', b'{"$d": [[[1], 2]]}', b'{"$b": "!!"}',
    b'{"$dt": 5}', b'{"$zz": 1}', b'{"$c": [1]}', b'{"$td": [1e308, 0, 0]}',
    b"[" * 100_000 + b"]" * 100_000, b"\xff\xfe", b""])
def test_a_hostile_json_row_is_refused_not_raised(tmp_path: Path, payload: bytes) -> None:
    """A JSON row planted by someone else that the decoder chokes on (bad tags, unhashable
    keys, overflow, nesting past the recursion limit, not text): refused, the task
    recomputes, the run is unharmed."""
    db = tmp_path / "c.db"
    t = tl(lambda: 7, name="victim", cache=True)
    flowdsl.run(t().named("t"), cache=str(db))
    # Signed with the key (the decoder must hold even then), and unsigned.
    _plant(db, "victim", payload, "json", _sign(db, "victim", "json", payload))
    r = flowdsl.run(t().named("t"), cache=str(db))
    assert r.ok and r.output == 7 and r.tasks["t"].status is S.COMPLETED
    assert "cache entry refused: it cannot be decoded" in r.tasks["t"].reason
    _plant(db, "victim", payload, "json", None)
    r = flowdsl.run(t().named("t"), cache=str(db))
    assert r.output == 7 and "signature does not match" in r.tasks["t"].reason


def test_a_planted_json_row_cannot_change_a_result(tmp_path: Path) -> None:
    """A valid JSON row written without the key (another value, or another key's signed
    row moved over): refused, the tool's own output stands."""
    db = tmp_path / "c.db"
    t = tl(lambda x: x * 2, name="double", cache=True)
    flowdsl.run(t(1).named("a") | t(2).named("b"), cache=str(db))
    c = sqlite3.connect(db)
    key_of = {bytes(v): k for v, k in c.execute("SELECT value, key FROM entries")}
    with c:  # another value, unsigned
        c.execute("UPDATE entries SET value=? WHERE key=?", (b"999", key_of[b"2"]))
    r = flowdsl.run(t(1).named("a"), cache=str(db))
    assert r.output == 2 and "signature does not match" in r.tasks["a"].reason
    (mac_b,) = c.execute("SELECT mac FROM entries WHERE key=?", (key_of[b"4"],)).fetchone()
    with c:  # b's signed row moved over a's
        c.execute("UPDATE entries SET value=?, mac=? WHERE key=?", (b"4", mac_b, key_of[b"2"]))
    c.close()
    r = flowdsl.run(t(1).named("a"), cache=str(db))
    assert r.output == 2 and "signature does not match" in r.tasks["a"].reason
