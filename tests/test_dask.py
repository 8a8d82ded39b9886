"""The dask executor: the same flows on a LocalCluster of two worker processes give the same
results as on local executors; priorities, retries, timeouts, killed workers, unpicklable
tasks, cancellation, pools and mixed local/remote tasks.

One cluster serves the whole module (starting one takes seconds), so the per-test leak check
of conftest is replaced by one check when the module ends, after the cluster has closed.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

pytest.importorskip("distributed")

import dask_tools as dt  # tests/ is on sys.path; workers get the tools by value
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import SchedulerPlugin
from support import run

import flowdsl
from flowdsl import SerializationError, TaskFailed, TaskStatus, ctx, tool
from flowdsl._run.dask import DaskExecutor, DaskRemote

S = TaskStatus
MODES = ["sequential", "parallel", "pipeline", "conditional"]

pytestmark = [
    # A LocalCluster closing while a cancelled task still sleeps on a worker makes the nanny
    # report the worker's pipe closing; harmless, and only at module teardown.
    pytest.mark.filterwarnings(
        "ignore:.*Exception ignored in.*:pytest.PytestUnraisableExceptionWarning"),
]


# -- fixtures ---------------------------------------------------------------------------------
def _threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.is_alive()}


@pytest.fixture(scope="module")
def _module_leaks() -> Iterator[None]:
    """The cluster and every run's threads and processes are gone once the module ends."""
    before = _threads()
    yield
    deadline = time.monotonic() + 10.0
    while True:
        extra = [t for t in _threads() - before if not t.daemon or t.name.startswith("flowdsl")]
        children = multiprocessing.active_children()
        if (not extra and not children) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not children, f"child processes leaked: {children}"
    assert not extra, f"threads leaked: {[t.name for t in extra]}"


@pytest.fixture(autouse=True)
def _no_leaks() -> Iterator[None]:
    """Overrides conftest's per-test check: the module's cluster outlives each test."""
    yield


@pytest.fixture(scope="module")
def cluster(_module_leaks: None) -> Iterator[LocalCluster]:
    """Two single-threaded worker processes, no dashboard, shared by the module."""
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      scheduler_kwargs={"dashboard": False, "dashboard_address": ":0"}) as c:
        yield c


@pytest.fixture
def ex(cluster: LocalCluster) -> DaskExecutor:
    """An executor on the module's cluster (its own client per run)."""
    return DaskExecutor(cluster)


def keys_left(cluster: LocalCluster, timeout: float = 5.0) -> list[str]:
    """Keys the scheduler still holds once it settles (cancellations are messages)."""
    deadline = time.monotonic() + timeout
    while True:
        keys = list(cluster.scheduler.tasks)
        if not keys or time.monotonic() > deadline:
            return keys
        time.sleep(0.05)


def workers_up(cluster: LocalCluster, n: int = 2, timeout: float = 15.0) -> None:
    """Wait until ``n`` workers are connected (a killed one is restarted by its nanny)."""
    deadline = time.monotonic() + timeout
    while len(cluster.scheduler.workers) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(cluster.scheduler.workers) == n


def sample(*, value: int = 1) -> Any:
    """Chain, fan-out, projection and to_context: the shapes the core resolves."""
    a = dt.inc(value).named("a")
    b = dt.add(a, 10).named("b")
    c = dt.pair(b).named("c").to_context({"k": "k"})
    d = dt.add(c["k"], c["j"]).named("d")
    e = dt.add(ctx("k"), b).named("e")
    return a >> b >> c >> (d | e)


# -- same results as local ------------------------------------------------------------------
class TestSameResults:
    @pytest.mark.parametrize("mode", MODES)
    def test_outputs_identical_to_local(self, ex: DaskExecutor, mode: str) -> None:
        """Every mode gives the same outputs, statuses and context on the cluster."""
        local = run(sample(), mode=mode)
        remote = run(sample(), mode=mode, executor=ex)
        assert remote.ok, remote.error
        assert remote.outputs == local.outputs == {
            "a": 2, "b": 12, "c": {"k": 12, "j": 24}, "d": 36, "e": 24}
        assert remote.context == local.context == {"k": 12}
        assert remote.output == local.output
        assert all(r.status is S.COMPLETED for r in remote.tasks.values())

    def test_pipeline_over_items(self, ex: DaskExecutor) -> None:
        """A pipeline streams items through remote stages (with a fan-out) in order."""
        flow = (dt.inc.stage().named("s1") >> (dt.add.stage(b=100).named("s2")
                                               | dt.inc.stage().named("s3"))
                >> dt.total.stage().named("s4"))
        local = run(flow, mode="pipeline", items=[1, 2, 3])
        remote = run(flow, mode="pipeline", items=[1, 2, 3], executor=ex)
        assert remote.ok, remote.error
        assert remote.output == local.output == [105, 107, 109]

    def test_coroutine_tools_run_on_workers(self, ex: DaskExecutor) -> None:
        """Async tools go to the cluster too (workers await them) and keep their values."""
        r = run(dt.nap(0.01, {"x": 1}).named("n") >> dt.pid().named("p"), executor=ex)
        assert r.ok, r.error
        assert r.outputs["n"] == {"x": 1}
        assert r.outputs["p"] != os.getpid()

    @pytest.mark.parametrize("mode", MODES)
    def test_mapped_children_run_on_the_cluster(self, ex: DaskExecutor, mode: str) -> None:
        """A mapped task's children go to the workers; downstream gets plain values in
        input order, the same as locally."""
        src = dt.add(0, 3).named("src")
        flow = src >> dt.pid.map([1, 2, 3]).named("pids") >> dt.inc.map(
            dt.add.map([10, 20, 30], b=flowdsl.each([1, 2, 3])).named("sums")).named("incs")
        remote = run(flow, mode=mode, executor=ex)
        local = run(flow, mode=mode)
        assert remote.ok, remote.error
        assert remote.outputs["incs"] == local.outputs["incs"] == [12, 23, 34]
        assert os.getpid() not in remote.outputs["pids"]
        assert len(remote.outputs["pids"]) == 3
        assert not any(isinstance(v, DaskRemote) for v in remote.outputs["sums"])
        assert remote.tasks["sums[2]"].status is S.COMPLETED

    @pytest.mark.parametrize("mode", MODES)
    def test_maps_by_name_on_the_cluster(self, ex: DaskExecutor, mode: str) -> None:
        """A map by name (the second parameter over a cluster task's output, zipped with a
        list, a constant to every child) runs its children on the workers, as locally; a
        length mismatch fails the same way."""
        src = dt.inc.map([0, 1, 2]).named("src")
        flow = src >> dt.add.map(b=src, a=[1, 2, 3]).named("sums") >> dt.pid.map(
            after=dt.add.map(a=[5, 6], b=2).named("consts")).named("pids")
        remote = run(flow, mode=mode, executor=ex)
        local = run(flow, mode=mode)
        assert remote.ok, remote.error
        assert remote.outputs["sums"] == local.outputs["sums"] == [2, 4, 6]
        assert remote.outputs["consts"] == [7, 8]
        assert os.getpid() not in remote.outputs["pids"]
        bad = run(dt.add.map(a=[1, 2], b=[1]).named("z"), mode=mode, executor=ex)
        assert "'b' has 1 elements but 'a' has 2" in bad.tasks["z"].error.message

    @pytest.mark.parametrize("mode", MODES)
    def test_mapped_sub_flows_on_the_cluster(self, ex: DaskExecutor, mode: str) -> None:
        """A sub-flow mapped per element (a Flow by position, a fragment by name) runs each
        element's steps on the workers, as locally; the output is the elements' outputs in
        input order, as plain values; a step raising on a worker fails its element."""
        src = dt.add(0, 3).named("src")
        per = flowdsl.Flow("per", dt.inc.stage() >> dt.add.stage(b=100) >> dt.pid.stage())
        m = per.map([1, 2, 3])
        named = (dt.add.stage() >> dt.inc.stage()).map(a=[1, 2], b=10).named("ab")
        flow = src >> m >> named
        remote = run(flow, mode=mode, executor=ex)
        local = run(flow, mode=mode)
        assert remote.ok, remote.error
        assert remote.outputs["ab"] == local.outputs["ab"] == [12, 13]
        assert len(remote.outputs["per"]) == 3
        assert os.getpid() not in remote.outputs["per"]
        assert not any(isinstance(v, DaskRemote) for v in remote.outputs["per"])
        assert remote.tasks["per[2].add"].status is S.COMPLETED
        assert remote.outputs["per[2].add"] == 104
        bad = run(flowdsl.Flow("b", dt.boom.stage() >> dt.inc.stage()).map(["x", "y"]),
                  mode=mode, executor=ex, continue_on_error=True)
        assert bad.tasks["b"].status is S.FAILED
        assert "ValueError: x" in bad.tasks["b"].error.message

    def test_a_failed_child_on_the_cluster_fails_the_map(self, ex: DaskExecutor) -> None:
        """A child raising on a worker fails its mapped task with the worker's error."""
        r = run(dt.boom.map(["x", "y"]).named("b"), executor=ex, continue_on_error=True)
        assert r.tasks["b"].status is S.FAILED
        assert "ValueError: x" in r.tasks["b"].error.message

    def test_cache_hits_skip_the_cluster(self, cluster: LocalCluster) -> None:
        """A cached tool computed on a worker is restored by the next run (its output is
        the first run's, so nothing was recomputed), as plain values; mapped children too."""
        def flow() -> Any:
            return dt.cached_pid.map([1, 2]).named("m") >> dt.cached_pid(3).named("one")

        first = run(flow(), executor=DaskExecutor(cluster), history=None)
        second = run(flow(), executor=DaskExecutor(cluster), history=None)
        assert first.ok and second.ok, (first.error, second.error)
        assert os.getpid() not in [o["pid"] for o in first.outputs["m"]]
        assert second.outputs["m"] == first.outputs["m"]
        assert second.outputs["one"] == first.outputs["one"]
        assert [second.tasks[t].status for t in ("m[0]", "m[1]", "one")] == [S.CACHED] * 3

    def test_no_handles_reach_the_caller(self, ex: DaskExecutor) -> None:
        """outputs, output and context hold plain values, never remote handles."""
        r = run(sample(), executor=ex)
        values = [*r.outputs.values(), r.output, *r.context.values()]
        assert not any(isinstance(v, DaskRemote) for v in values)


# -- semantics, parametrized over the executor ---------------------------------------------
@pytest.fixture(params=["local", "dask"])
def where(request: pytest.FixtureRequest, cluster: LocalCluster) -> dict[str, Any]:
    """Run options for a local run and for a run on the module's cluster."""
    return {} if request.param == "local" else {"executor": DaskExecutor(cluster)}


class TestSemantics:
    @pytest.mark.parametrize("mode", MODES)
    def test_failure(self, where: dict[str, Any], mode: str) -> None:
        """A failing tool fails the run with its own exception type; downstream never runs."""
        r = run(dt.inc(1).named("ok") >> dt.boom("bad row").named("bad")
                >> dt.inc(0).named("after"), mode=mode, **where)
        assert r.status == "failed"
        assert r.tasks["ok"].status is S.COMPLETED and r.tasks["bad"].status is S.FAILED
        assert r.tasks["after"].status in (S.PENDING, S.UPSTREAM_FAILED)
        assert isinstance(r.error, TaskFailed) and r.error.task_id == "bad"
        assert isinstance(r.error.__cause__, ValueError)
        assert str(r.error.__cause__) == "bad row"
        assert r.tasks["bad"].error.type == "ValueError"
        assert "boom" in r.tasks["bad"].error.traceback  # the worker's frames are kept

    @pytest.mark.parametrize("mode", ["parallel", "conditional"])
    def test_continue_on_error(self, where: dict[str, Any], mode: str) -> None:
        """With continue_on_error an independent branch completes; downstream of the failure
        is upstream_failed."""
        a = dt.boom("x").named("a")
        r = run((a >> dt.inc(1).named("c")) | dt.inc(2).named("b"), mode=mode,
                continue_on_error=True, **where)
        assert r.summary() == {"failed": 1, "upstream_failed": 1, "completed": 1}
        assert r.outputs["b"] == 3

    @pytest.mark.parametrize(("rule", "want", "inputs"), [
        ("all_success", S.UPSTREAM_FAILED, None), ("all_done", S.COMPLETED, 1),
        ("one_success", S.COMPLETED, 1), ("none_failed", S.UPSTREAM_FAILED, None),
        ("one_failed", S.COMPLETED, 1)])
    def test_trigger_rules(self, where: dict[str, Any], rule: str, want: TaskStatus,
                           inputs: int | None) -> None:
        """Trigger rules see remote failures like local ones; a join gets None for the
        failed input."""
        join = dt.count(dt.boom("x").named("bad"), dt.inc(1).named("good"))
        r = run(join.named("join").with_options(trigger=rule), continue_on_error=True,
                **where)
        assert r.tasks["join"].status is want
        assert r.outputs.get("join") == inputs

    def test_conditions_and_mapping(self, where: dict[str, Any]) -> None:
        """A condition reads context written from a remote output; skips propagate."""
        p = dt.pair(3).named("p").to_context({"k": "n"})
        yes = dt.add(ctx("n"), 1).named("yes").when(lambda c: c["n"] == 3)
        no = dt.inc(0).named("no").when(lambda c: c["n"] != 3)
        after = dt.inc(no).named("after")
        r = run(p >> (yes | (no >> after)), mode="conditional", **where)
        assert r.ok, r.error
        assert r.outputs["yes"] == 4 and r.context == {"n": 3}
        assert r.tasks["no"].status is S.SKIPPED and r.tasks["after"].status is S.SKIPPED

    def test_rollback_sees_values(self, where: dict[str, Any]) -> None:
        """rollback_on_failure undoes completed remote tasks with their plain outputs."""
        undone: list[Any] = []
        undoer = tool(lambda: {"id": 7}, registry=False, rollback=undone.append)
        r = run(undoer().named("make") >> dt.boom("x").named("bad"),
                rollback_on_failure=True, **where)
        assert r.status == "rolled_back"  # issue 16 item 8: failed, then fully undone
        assert undone == [{"id": 7}]
        assert r.tasks["make"].status is S.ROLLED_BACK


# -- the cluster's side -------------------------------------------------------------------
class TestCluster:
    def test_priorities_passed_through(self, ex: DaskExecutor) -> None:
        """An explicit priority and the critical-path priority reach the worker."""
        fixed = dt.priority().named("fixed").with_options(priority=7)
        cp = dt.priority().named("cp").with_options(expected_duration=2.5)
        r = run(fixed | cp, executor=ex)
        assert r.ok, r.error
        assert r.outputs["fixed"][0] == -7  # dask orders by (-priority, ...)
        assert r.outputs["cp"][0] == -2.5  # remaining path of a lone task: its duration

    def test_data_moves_between_workers(self, cluster: LocalCluster) -> None:
        """A remote task receives its remote input as a handle, not a value."""
        seen: list[Any] = []

        class Spy(DaskExecutor):
            async def call(self, fn: Any, args: Any, kwargs: Any, *, task_id: str) -> Any:
                seen.append((task_id, [*args, *kwargs.values()]))
                return await super().call(fn, args, kwargs, task_id=task_id)

        a = dt.inc(1).named("a")
        r = run(a >> dt.inc(a).named("b"), executor=Spy(cluster))
        assert r.ok and r.outputs["b"] == 3
        assert isinstance(dict(seen)["b"][0], DaskRemote)

    def test_existing_cluster_left_running(self, cluster: LocalCluster) -> None:
        """An address, a Client and a LocalCluster all work and stay up after the run."""
        with Client(cluster, set_as_default=False) as client:
            for target in (cluster.scheduler_address, client, cluster):
                r = run(dt.inc(1).named("a"), executor=DaskExecutor(target))
                assert r.ok and r.outputs == {"a": 2}
            assert len(client.scheduler_info()["workers"]) == 2
        assert keys_left(cluster) == []

    def test_executor_dask_starts_and_stops_a_cluster(self) -> None:
        """executor='dask' on one task runs it on a cluster started for the run, the rest
        here, and leaves no worker process behind."""
        remote = dt.pid().named("remote").with_options(executor="dask")
        local = dt.pid_here(remote).named("local")
        before = set(multiprocessing.active_children())
        r = run(remote >> local)
        assert r.ok, r.error
        assert r.outputs["local"] == os.getpid() != r.outputs["remote"]
        deadline = time.monotonic() + 5
        while set(multiprocessing.active_children()) - before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert set(multiprocessing.active_children()) <= before

    def test_mixed_local_and_remote(self, ex: DaskExecutor) -> None:
        """Inline tools stay here and get fetched values; the rest go to the cluster."""
        a = dt.pid().named("a")
        b = dt.pid_here(a).named("b")
        c = dt.pid(b).named("c")
        r = run(a >> b >> c, executor=ex)
        assert r.ok, r.error
        assert r.outputs["b"] == os.getpid()
        assert os.getpid() not in (r.outputs["a"], r.outputs["c"])


class GraphsSeen(SchedulerPlugin):
    """Records every graph the scheduler receives: its keys and their priorities."""

    name = "flowdsl-test-graphs"

    def __init__(self) -> None:
        self.graphs: list[dict[str, Any]] = []

    def update_graph(self, scheduler: Any, *, keys: Any, priority: Any,
                     **kwargs: Any) -> None:
        self.graphs.append({k: priority[k] for k in keys})


@pytest.fixture
def graphs(cluster: LocalCluster) -> Iterator[list[dict[str, Any]]]:
    """The graphs (key -> scheduler priority) submitted to the module's cluster meanwhile."""
    seen = GraphsSeen()
    cluster.scheduler.add_plugin(seen)
    try:
        yield seen.graphs
    finally:
        cluster.scheduler.remove_plugin(name=GraphsSeen.name)


class TestBatching:
    def test_released_together_sent_as_one_graph(self, ex: DaskExecutor,
                                                 graphs: list[dict[str, Any]]) -> None:
        """Tasks released in the same loop iteration reach the scheduler in one graph,
        each with its own key (tool name first, task id last) and priority."""
        tasks = [dt.inc(i).named(f"w{i}").with_options(priority=i) for i in range(8)]
        r = run(flowdsl.parallel(*tasks), executor=ex)
        assert r.ok, r.error
        assert r.outputs == {f"w{i}": i + 1 for i in range(8)}
        assert len(graphs) == 1 and len(graphs[0]) == 8
        for key, prio in graphs[0].items():
            assert key.startswith("inc-")  # the scheduler groups tasks by this prefix
            i = int(key.rsplit("-w", 1)[1])
            assert prio[0] == -i  # dask orders by (-priority, ...)

    def test_chain_sends_one_graph_per_task(self, ex: DaskExecutor,
                                            graphs: list[dict[str, Any]]) -> None:
        """A task is submitted only once its upstream is done: a chain is one graph each."""
        a = dt.inc(1).named("a")
        r = run(a >> dt.inc(a).named("b") >> dt.inc(2).named("c"), executor=ex)
        assert r.ok, r.error
        assert [[k.rsplit("-", 1)[1] for k in g] for g in graphs] == [["a"], ["b"], ["c"]]

    def test_unpicklable_argument_fails_only_its_task(self, ex: DaskExecutor,
                                                      graphs: list[dict[str, Any]]) -> None:
        """A batch holding one task whose run-time argument does not pickle still sends the
        others; only that task fails, with SerializationError naming it."""
        make = tool(dt.lock.fn, registry=False, executor="inline")
        lock = make().named("lock")
        flow = lock >> (dt.add(lock, 0).named("use") | dt.inc(1).named("good"))
        r = run(flow, executor=ex, continue_on_error=True)
        assert r.tasks["use"].status is S.FAILED
        assert r.tasks["use"].error.type == "SerializationError"
        assert r.tasks["good"].status is S.COMPLETED and r.outputs["good"] == 2
        sent = [k.rsplit("-", 1)[1] for g in graphs for k in g]
        assert sent == ["good"]


class TestFaults:
    def test_retries_with_backoff(self, ex: DaskExecutor, tmp_path: Path) -> None:
        """A tool failing twice on the cluster succeeds on its third attempt."""
        t = dt.flaky(str(tmp_path / "n"), 2).named("f").with_options(retries=2, backoff=0.01)
        r = run(t, executor=ex)
        assert r.ok, r.error
        assert r.outputs["f"] == 3
        assert [a.status for a in r.tasks["f"].attempts] == [S.FAILED, S.FAILED, S.COMPLETED]
        assert r.tasks["f"].attempts[0].error.type == "ConnectionError"

    def test_timeout_cancels_the_future(self, ex: DaskExecutor,
                                        cluster: LocalCluster) -> None:
        """A task past its timeout is timed_out and its future leaves the cluster."""
        t = dt.span(1.0, "slow").named("slow").with_options(timeout=0.2)
        r = run(t, executor=ex)
        assert r.tasks["slow"].status is S.TIMED_OUT
        assert "abandoned" in (r.tasks["slow"].reason or "")
        assert keys_left(cluster) == []

    def test_worker_killed_mid_task(self, ex: DaskExecutor, cluster: LocalCluster,
                                    tmp_path: Path) -> None:
        """A worker killed mid-task costs a rerun on a live worker, not the run."""
        counter = str(tmp_path / "n")
        r = run(dt.suicide_once(counter).named("k") >> dt.inc(1).named("after"),
                executor=ex)
        assert r.ok, r.error
        assert r.outputs["k"] == 2  # ran twice: killed once, then finished elsewhere
        assert r.outputs["after"] == 2
        workers_up(cluster)

    def test_unpicklable_function_fails_before_submission(self, ex: DaskExecutor,
                                                          tmp_path: Path) -> None:
        """A tool that cannot be pickled raises SerializationError naming it; nothing ran."""
        guard = threading.Lock()
        bad = tool(lambda: guard.locked(), registry=False)
        marker = tmp_path / "ran"
        first = dt.flaky(str(marker), 0).named("first")
        with pytest.raises(SerializationError, match="'locked'") as info:
            run(first >> bad().named("locked"), executor=ex)
        assert info.value.task_id == "locked"
        assert not marker.exists()

    def test_unpicklable_argument_at_run_time(self, ex: DaskExecutor) -> None:
        """An upstream value that cannot be pickled fails the remote task consuming it."""
        make = tool(dt.lock.fn, registry=False, executor="inline")
        r = run(dt.add(make().named("lock"), 0).named("use"), executor=ex)
        assert r.tasks["use"].status is S.FAILED
        assert isinstance(r.error, SerializationError) and r.error.task_id == "use"
        assert "dask worker" in str(r.error)

    def test_run_timeout_leaves_no_futures(self, ex: DaskExecutor,
                                           cluster: LocalCluster) -> None:
        """A run stopped by its timeout cancels its futures on the cluster."""
        flow = dt.span(1.0, "a").named("a") | dt.span(1.0, "b").named("b")
        r = run(flow, executor=ex, timeout=0.2)
        assert r.status == "timed_out"
        assert {r.tasks[t].status for t in "ab"} == {S.CANCELLED}
        assert ex.client is None and not ex._inflight
        assert keys_left(cluster) == []

    def test_cancelled_from_outside(self, ex: DaskExecutor, cluster: LocalCluster) -> None:
        """Cancelling arun from outside cancels its futures and closes the client."""

        async def main() -> None:
            with anyio.move_on_after(0.3):
                await flowdsl.arun(dt.span(1.0, "a").named("a"), executor=ex, history=False)

        anyio.run(main)
        assert ex.client is None
        assert keys_left(cluster) == []

    def test_trio_backend_refused(self, ex: DaskExecutor) -> None:
        """The trio backend gets a clear error instead of a hang."""
        with pytest.raises(RuntimeError, match="asyncio backend"):
            run(dt.inc(1), executor=ex, backend="trio")


class TestPools:
    @pytest.mark.parametrize("cap", [1, 2])
    def test_capacity_holds_on_the_cluster(self, ex: DaskExecutor, cap: int) -> None:
        """flowdsl's pools bound how many remote tasks run at once (worker-side spans)."""
        tasks = [dt.span(0.15, f"t{i}").named(f"t{i}").with_options(resources={"db": 1})
                 for i in range(4)]
        r = run(flowdsl.parallel(*tasks), executor=ex, resources={"db": cap})
        assert r.ok, r.error
        spans = list(r.outputs.values())
        points = sorted([(s, 1) for _, s, _ in spans] + [(e, -1) for _, _, e in spans])
        now = most = 0
        for _, d in points:
            now += d
            most = max(most, now)
        assert most <= cap


class TestOptionalExtra:
    def test_import_flowdsl_does_not_import_dask(self) -> None:
        """import flowdsl (and its public names' lookup) never loads dask."""
        code = ("import sys, flowdsl; flowdsl.DaskExecutor; "
                "assert not {'dask', 'distributed'} & set(sys.modules), sorted(sys.modules)")
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60)

    def test_missing_dask_says_how_to_install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without dask.distributed the error names the extra to install."""
        monkeypatch.setitem(sys.modules, "distributed", None)
        with pytest.raises(ImportError, match=r"pip install flowdsl\[dask\]"):
            DaskExecutor()


class TestClusterLost:
    def test_cluster_closed_mid_run_fails_the_run(self, _module_leaks: None) -> None:
        """Issue 16 item 5: a cluster closed mid-run ends the run as failed, promptly: the
        running task fails naming the cluster, its downstream does not run, the finished
        task's lost output is reported, and run() raises nothing (it used to raise
        FutureCancelledError)."""
        with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                          dashboard_address=None,
                          scheduler_kwargs={"dashboard": False, "dashboard_address": ":0"}) as c:
            address = c.scheduler_address
            flow = (dt.span(0.05, "a").named("a") >> dt.span(5.0, "b").named("b")
                    >> dt.span(0.05, "c").named("c"))
            # Closed once 'b' has started (not on a timer from here, which a loaded machine
            # could beat before 'a' finished), a moment later so that 'b' is on a worker.
            closer = threading.Timer(0.5, c.close)

            class CloseWhenBStarts:
                def run_started(self, result: Any, plan: Any) -> None: ...
                def task_started(self, result: Any, record: Any) -> None:
                    if record.id == "b":
                        closer.start()
                def task_finished(self, result: Any, record: Any, output: Any) -> None: ...
                def run_finished(self, result: Any) -> None: ...

            start = time.perf_counter()
            r = flowdsl.run(flow, executor=DaskExecutor(c), history=False,
                            observers=[CloseWhenBStarts()])
            took = time.perf_counter() - start
            closer.join()
        assert took < 15, f"{took:.1f}s"
        assert r.status == "failed"
        b = r.tasks["b"]
        assert b.status is S.FAILED and b.error is not None and b.error.type == "WorkerLost"
        assert f"the Dask cluster at {address} was closed or lost" in b.error.message
        assert r.tasks["c"].status in (S.PENDING, S.UPSTREAM_FAILED)
        assert r.tasks["a"].status is S.COMPLETED
        assert any(isinstance(e, flowdsl.WorkerLost) and "'a'" in str(e) for e in r.errors)
