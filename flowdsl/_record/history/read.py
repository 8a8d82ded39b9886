"""Record, the reading half of the history: runs, one run, stored outputs, per-tool statistics
and expected durations, all as plain data.

:class:`HistoryReader` is a mixin of :class:`~flowdsl._record.history.HistoryStore`; it reads
through the store's ``_query`` (which writes the rows still waiting first). Statistics and
expected durations come from the ``stats`` aggregates, so their cost follows the flow's tools,
never the number of rows in the file. A run's expected durations are also cached per flow for a
few seconds (updated as this process records runs of that flow), so a run started again and
again reads no SQLite at all.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal, overload

from ..._base.errors import HistoryError, RunNotFound
from ..._run.result import TaskStatus
from .sink import unpack
from .write import CHILD_INPUT, plan_keys

if TYPE_CHECKING:
    from ..._plan.planner import Plan

__all__ = ["SCOPES", "HistoryReader", "ToolStats"]

SCOPES = ("flow", "all")
#: Seconds a flow's expected durations are reused without asking SQLite (runs of other
#: processes show after this long; this process's own runs at once).
CACHE_SECONDS = 10.0
#: The largest cached flow (tasks read) that a run's end re-reads at once (see _refresh_flow).
REFRESH_MAX = 1000
_CACHE_FLOWS = 64
#: Cached plans per flow name (unnamed flows all share ``""``; each entry holds figures per
#: task of its plan).
_PLANS_PER_FLOW = 4
_Fig = tuple[int, float, float]  # count, mean, median
#: Per task (tool, task id): its task_stats sum and latest durations (d1 newest, the empty
#: slots left out), as read;
#: ``None`` for an entry with a mapped task (its children are pooled).
_Sums = dict[tuple[str, str], tuple[float, tuple[float, ...]]] | None
_Entry = tuple[float, dict[tuple[str, str], _Fig], dict[str, _Fig], _Sums]


@dataclass(frozen=True, slots=True)
class ToolStats:
    """Statistics of one tool over the history.

    Durations are those of the tool's successful calls (attempts), in seconds; ``None`` when
    no call succeeded yet. Counts and the mean cover every run recorded; the quantiles cover
    the latest 64 successful calls in each flow.

    Attributes:
        tool: the tool's identity, its module-qualified name (``package.module.fetch``).
        count: how many tasks of this tool ran (reached a final status after starting).
        completed: how many of them completed.
        failed: how many failed or timed out.
        success_rate: completed / (completed + failed); ``None`` before any finished.
        attempts: how many calls were made in all.
        timeouts: how many calls timed out.
        mean, p50, p95, max: of the successful calls' durations.
        name: the tool's short name (``fetch``).
        flows: the flows whose runs these figures come from.
    """

    tool: str
    count: int
    completed: int
    failed: int
    success_rate: float | None
    attempts: int
    timeouts: int
    mean: float | None
    p50: float | None
    p95: float | None
    max: float | None
    name: str = ""
    flows: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["flows"] = list(self.flows)
        return out


def _merge_windows(rows: Iterable[tuple[int, float, bytes | None]]) -> tuple[int, float,
                                                                               list[float]]:
    n, total = 0, 0.0
    values: list[float] = []
    for rn, rsum, blob in rows:
        n += rn
        total += rsum
        values.extend(unpack(blob))
    values.sort()
    return n, total, values




class HistoryReader:
    """The reading methods of a history store (a mixin: the store gives ``_query``,
    ``path`` and ``scope``)."""

    path: str
    scope: str
    _pending: list[Any]  # runs written whose statistics are still to be folded in

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        raise NotImplementedError

    def _init_reader(self) -> None:
        # (flow, the (tool, task id) pairs read) -> (when read, per task (tool, task id) ->
        # (count, mean, median), per tool, per task its sum and latest durations). Plans
        # of one name that differ (another tool, other tasks) keep entries of their own.
        self._flow_cache: dict[tuple[str, frozenset[tuple[str, str]]], _Entry] = {}
        self._cache_lock = threading.Lock()

    def _refresh_flow(self, flow: str, ran: dict[tuple[str, str], float] | None = None,
                      *, tools: bool = True) -> None:
        """A run of ``flow`` was recorded (its end's aggregates are committed; the caller
        holds the connection): bring its cached figures up to date, keeping each entry's
        age (so other processes' runs show when it expires).

        ``ran`` is what the run added to ``task_stats``: the duration of each task it
        completed, by (qualified tool, task id). An entry without mapped tasks takes it in
        memory, as SQL did (count + 1, sum + duration, the duration first of the latest
        five), and re-reads only the flow's per-tool rows; another entry is re-read, or
        dropped when it holds more than :data:`REFRESH_MAX` tasks (the next run reads it in
        a worker thread). A 10,000-task flow was re-read row by row at every run's end, as
        long as writing the run's rows, while the run waited for it.

        ``tools=False``: the run is not folded into SQL yet (the writer folds it just after
        the run returns). Entries take ``ran`` in memory and keep their tools' figures,
        which the call after the fold (``ran={}``) reads again; entries that cannot take it
        in memory are dropped."""
        with self._cache_lock:
            hits = [(k, v) for k, v in self._flow_cache.items() if k[0] == flow]
        if not hits:
            return
        new_tools: dict[str, _Fig] | None = None
        for key, (when, tasks, old_tools, sums) in hits:
            wanted = key[1]
            if sums is not None and ran is not None:
                if tools and new_tools is None:
                    new_tools = self._read_tools(flow, flush=False)
                # In place, under the lock that readers pick figures under (copying a
                # 10,000-task entry at each small run's end cost more than the update).
                with self._cache_lock:
                    for pair in wanted.intersection(ran):  # in C; often none
                        d = ran[pair]
                        total, recent = sums.get(pair, (0.0, ()))
                        total, recent = total + d, (d, *recent[:4])
                        n = (tasks[pair][0] if pair in tasks else 0) + 1
                        sums[pair] = (total, recent)
                        tasks[pair] = (n, total / n, _median(recent))
                entry: _Entry | None = (when, tasks, old_tools if new_tools is None else new_tools,
                                         sums)
            elif len(wanted) > REFRESH_MAX or not tools:
                entry = None
            else:
                tasks, read_tools, sums = self._read_flow(flow, wanted, flush=False)
                entry = (when, tasks, read_tools, sums)
            with self._cache_lock:
                if entry is None:
                    self._flow_cache.pop(key, None)
                else:
                    self._flow_cache[key] = entry

    def runs(self, limit: int = 20, *, flow: str | None = None,
             status: str | None = None, offset: int = 0) -> list[dict[str, Any]]:
        """The newest runs first: run id, flow, mode, status, start (Unix time), end, duration,
        the error type and message, and the history error if its rows were not all written.
        Filter by flow name or status if given; skip the newest ``offset`` runs (paging)."""
        where, params = [], []
        if flow is not None:
            where.append("flow = ?")
            params.append(flow)
        if status is not None:
            where.append("status = ?")
            params.append(status)
        sql = ("SELECT run_id, flow, mode, status, started_at, ended_at, duration, error_type, "
               "error_message, history_error FROM runs"
               + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY seq DESC LIMIT ? OFFSET ?")
        return self._query(sql, (*params, limit, offset))

    def flows(self) -> dict[str | None, int]:
        """Each flow name with runs in the history, and how many."""
        rows = self._query("SELECT flow, count(*) AS n FROM runs GROUP BY flow ORDER BY flow")
        return {r["flow"]: r["n"] for r in rows}

    def get_run(self, run_id: str) -> dict[str, Any]:
        """One run with its ``tasks`` (in the order they started), each task's ``attempts``,
        ``item`` (a pipeline stage's item row ``stage@i``: ``i``; else ``None``), ``items``
        (a pipeline stage's summary row: how many items it recorded; else ``None``)
        and ``logs`` (the lines its tool kept, as on :attr:`TaskRecord.logs`; ``[]`` for
        none), and the plan's ``edges`` (``[[pred, succ], ...]`` by task id; ``None`` for a
        run recorded without them).

        Raises:
            RunNotFound: no run has that id (or it was removed by retention).
        """
        runs = self._query("SELECT run_id, flow, mode, status, started_at, ended_at, duration, "
                           "error_type, error_message, history_error, edges FROM runs "
                           "WHERE run_id = ?", (run_id,))
        if not runs:
            msg = f"no run {run_id!r} in the history at {self.path}"
            raise RunNotFound(msg, run_id)
        run = runs[0]
        run["edges"] = _json_list(run["edges"])
        tasks = self._query(
            "SELECT task_id, tool, qualname, status, started_at, ended_at, duration, attempts, "
            "error_type, error_message, reason, logs, item, items FROM tasks WHERE run_id = ? "
            "ORDER BY started_at IS NULL, started_at, rowid", (run_id,))
        attempts = self._query(
            "SELECT task_id, number, started_at, ended_at, duration, status, error_type, "
            "error_message FROM attempts WHERE run_id = ? ORDER BY task_id, number", (run_id,))
        by_task: dict[str, list[dict[str, Any]]] = {}
        for a in attempts:
            by_task.setdefault(a.pop("task_id"), []).append(a)
        for t in tasks:
            found = by_task.get(t["task_id"])
            if (found is None and t["attempts"] == 1 and t["status"] == "completed"
                    and t["items"] is None):
                # written without its one attempt row: the task's own row is that attempt
                found = [{"number": 1, "started_at": t["started_at"],
                          "ended_at": t["ended_at"], "duration": t["duration"],
                          "status": "completed", "error_type": None, "error_message": None}]
            t["attempts"] = found or []
            t["logs"] = _json_list(t["logs"]) or []
        run["tasks"] = tasks
        return run

    @overload
    def load_outputs(self, run_id: str, *, input_keys: Literal[False] = False
                     ) -> dict[str, Any]: ...
    @overload
    def load_outputs(self, run_id: str, *, input_keys: Literal[True]
                     ) -> tuple[dict[str, Any], dict[str, str]]: ...

    def load_outputs(self, run_id: str, *, input_keys: bool = False
                     ) -> dict[str, Any] | tuple[dict[str, Any], dict[str, str]]:
        """The stored outputs of the tasks that completed in run ``run_id`` (for resuming).

        Only JSON is ever read back: a row holding anything else is refused, never unpickled.
        With ``input_keys=True``: ``(outputs, keys)``, where ``keys`` maps each map child
        stored with its input hash to that hash (a resume reuses the child only when its
        input hashes the same again).

        Raises:
            RunNotFound: no run has that id.
            HistoryError: a stored output is not JSON text.
        """
        if not self._query("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)):
            msg = f"no run {run_id!r} in the history at {self.path}"
            raise RunNotFound(msg, run_id)
        rows = self._query("SELECT task_id, output FROM tasks WHERE run_id = ? AND status = ? "
                           "AND output IS NOT NULL", (run_id, TaskStatus.COMPLETED.value))
        out: dict[str, Any] = {}
        keys: dict[str, str] = {}
        for row in rows:
            raw = row["output"]
            tid = row["task_id"]
            try:
                if not isinstance(raw, str):
                    raise TypeError(type(raw).__name__)
                value = json.loads(raw)
            except (TypeError, ValueError) as exc:
                msg = (f"run {run_id!r}: the stored output of task {tid!r} is not "
                       f"JSON ({exc}); history holds JSON only and is never unpickled")
                raise HistoryError(msg) from None
            if (tid[-1:] == "]" and isinstance(value, dict) and len(value) == 2
                    and isinstance(value.get(CHILD_INPUT), str) and "output" in value):
                keys[tid] = value[CHILD_INPUT]  # a map child's output and input hash
                value = value["output"]
            out[tid] = value
        return (out, keys) if input_keys else out

    def tool_stats(self, tool: str | None = None, *, flow: str | None = None
                   ) -> dict[str, ToolStats]:
        """Per-tool statistics (count, success rate, mean/p50/p95/max duration of successful
        calls), keyed by the tool's qualified name.

        Args:
            tool: only this tool (its qualified name, or its short name).
            flow: only the runs of this flow (``""``: flows without a name); ``None``: every
                flow.
        """
        sql = ("SELECT flow, tool, name, tasks, completed, failed, attempts, timeouts, call_n, "
               "call_sum, call_max, call_recent FROM stats WHERE 1 = 1")
        params: list[Any] = []
        if flow is not None:
            sql += " AND flow = ?"
            params.append(flow)
        if tool is not None:
            sql += " AND (tool = ? OR name = ?)"
            params += [tool, tool]
        by_tool: dict[str, list[dict[str, Any]]] = {}
        for r in self._query(sql, params):
            by_tool.setdefault(r["tool"], []).append(r)
        return {name: _tool_stats(name, rows) for name, rows in sorted(by_tool.items())}

    def durations(self, plan: Plan, stat: str = "p50", *, scope: str | None = None
                  ) -> dict[str, float]:
        """Each task's expected duration from history: the median (``stat="p50"``) of its
        latest five completed runs in the same flow, or their mean over every run
        (``"mean"``); a task new to the flow takes its tool's figures in the flow (the median
        of its latest 64 tasks). With ``scope="all"``, a tool new to the flow takes its figures
        from any flow. Tools match by module-qualified name. Tasks with no history are left
        out. Costs the plan's tasks and the flow's tools (index lookups), whatever the size
        of the file and however many other tasks the flow's name has seen.
        """
        if stat not in ("p50", "mean"):
            msg = f"durations(stat={stat!r}): expected 'p50' or 'mean'"
            raise ValueError(msg)
        scope = self.scope if scope is None else _check_scope("durations", scope)
        flow = plan.name or ""
        idents, mapped, wanted = plan_keys(plan)
        tasks, tools, sums = self._read_flow(flow, wanted)
        with self._cache_lock:
            cache = self._flow_cache
            cache.pop((flow, wanted), None)  # re-inserted last: the newest of its flow
            same = [k for k in cache if k[0] == flow]
            for k in same[:max(0, len(same) - _PLANS_PER_FLOW + 1)]:
                del cache[k]  # the oldest plans of that name (memory: figures per task)
            if len(cache) >= _CACHE_FLOWS:
                cache.pop(next(iter(cache)))
            cache[(flow, wanted)] = (time.monotonic(), tasks, tools, sums)
        wide: dict[str, _Fig] = {}
        if scope == "all":
            others = sorted(set(idents.values()) - set(tools))
            rows: dict[str, list[tuple[int, float, bytes | None]]] = {}
            for i in range(0, len(others), 500):
                part = others[i:i + 500]
                for r in self._query(
                        "SELECT tool, task_n, task_sum, task_recent FROM stats WHERE tool IN "
                        f"({','.join('?' * len(part))})", part):
                    rows.setdefault(r["tool"], []).append(
                        (r["task_n"], r["task_sum"], r["task_recent"]))
            wide = {tool: _figures(found) for tool, found in rows.items()}
        return _pick(idents, tasks, {**wide, **tools}, stat, mapped)

    def cached_durations(self, plan: Plan) -> dict[str, float] | None:
        """:meth:`durations` (median, the store's scope) when it can be answered from memory
        without SQLite, else ``None``: what a run asks on the event loop before it goes to a
        worker thread."""
        pending = self._pending
        # A run not folded into SQL yet whose tasks' figures are not in memory either (a
        # pipeline over items): read, and wait for the fold, in SQLite.
        if self.scope != "flow" or not all(run.applied for run in pending):
            return None
        idents, mapped, wanted = plan_keys(plan)
        with self._cache_lock:
            # A plan of that name not read yet (another tool, other tasks) misses: its own
            # tasks are read (in a worker thread) and become an entry of their own.
            hit = self._flow_cache.get((plan.name or "", wanted))
            if hit is None or time.monotonic() - hit[0] > CACHE_SECONDS:
                return None
            if pending and not hit[1].keys() >= wanted:
                # A task new to the flow takes its tool's figures, which take the runs not
                # folded yet only once they are: wait for them.
                return None
            return _pick(idents, hit[1], hit[2], "p50", mapped)  # the writer updates in place

    def map_counts(self, plan: Plan) -> dict[str, int]:
        """For each mapped task of ``plan``, how many children it had in the latest of the
        flow's runs (among its last 20) that ran it. Mapped tasks never recorded are left
        out. Costs a few index lookups per mapped task, whatever the size of the file."""
        mapped = sorted(plan_keys(plan)[1])
        if not mapped or plan.name is None:
            return {}
        runs = [r for (r,) in self._rows("SELECT run_id FROM runs WHERE flow = ? ORDER BY "
                                         "seq DESC LIMIT 20", (plan.name,))]
        out: dict[str, int] = {}
        for tid in mapped:
            for run_id in runs:  # children `tid[i]` sort between `tid[` and `tid\\`
                ((n,),) = self._rows("SELECT count(*) FROM tasks WHERE run_id = ? AND "
                                     "task_id > ? AND task_id < ? AND task_id LIKE ? ESCAPE "
                                     "'!'", (run_id, tid + "[", tid + "\\",
                                             _like(tid) + "[%]"))
                if n:
                    out[tid] = n
                    break
        return out

    def _rows(self, sql: str, params: tuple[Any, ...], *, flush: bool = True
              ) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def _task_rows(self, flow: str, wanted: frozenset[tuple[str, str]], flush: bool
                   ) -> list[tuple[Any, ...]]:
        """The ``task_stats`` rows of the wanted (tool, task id) pairs (``id[]``: a mapped
        task's children), by primary key: never the rest of the flow's rows."""
        by_tool: dict[str, list[str]] = {}
        rows: list[tuple[Any, ...]] = []
        cols = "SELECT tool, task_id, n, total, d1, d2, d3, d4, d5 FROM task_stats "
        for tool, tid in wanted:
            if tid.endswith("[]"):  # children `tid[i]` sort between `tid[` and `tid\`
                base = tid[:-2]
                rows += self._rows(cols + "WHERE flow = ? AND tool = ? AND task_id > ? AND "
                                   "task_id < ? AND task_id LIKE ? ESCAPE '!'",
                                   (flow, tool, base + "[", base + "\\", _like(base) + "[%]"),
                                   flush=flush)
            else:
                by_tool.setdefault(tool, []).append(tid)
        for tool, tids in by_tool.items():
            for i in range(0, len(tids), 500):
                part = tids[i:i + 500]
                rows += self._rows(cols + "WHERE flow = ? AND tool = ? AND task_id IN "
                                   f"({','.join('?' * len(part))})", (flow, tool, *part),
                                   flush=flush)
        return rows

    def _read_flow(self, flow: str, wanted: frozenset[tuple[str, str]], *, flush: bool = True
                   ) -> tuple[dict[tuple[str, str], _Fig], dict[str, _Fig], _Sums]:
        tasks = {}
        sums: _Sums = None if any(tid.endswith("[]") for _, tid in wanted) else {}
        children: dict[tuple[str, str], list[Any]] = {}  # a mapped task's children, pooled
        for tool, tid, n, total, *recent in self._task_rows(flow, wanted, flush):
            ds = sorted(d for d in recent if d is not None)
            m = len(ds)
            mid = ds[m // 2] if m % 2 else (ds[m // 2 - 1] + ds[m // 2]) / 2 if m else 0.0
            tasks[(tool, tid)] = (n, total / n, mid)
            if sums is not None:  # empty slots only ever trail (a duration enters at d1)
                sums[(tool, tid)] = (total, tuple(d for d in recent if d is not None))
            if tid.endswith("]"):  # a child `parent[i]` of a mapped task
                pooled = children.setdefault((tool, tid.rpartition("[")[0] + "[]"), [0, 0.0, []])
                pooled[0] += n
                pooled[1] += total
                pooled[2].extend(ds)
        for key, (n, total, ds) in children.items():
            tasks[key] = (n, total / n, percentile(sorted(ds), 0.5) or 0.0)
        return tasks, self._read_tools(flow, flush=flush), sums

    def _read_tools(self, flow: str, *, flush: bool = True) -> dict[str, _Fig]:
        """The flow's per-tool figures (a row per tool)."""
        return {tool: _figures([(n, total, recent)]) for tool, n, total, recent in self._rows(
            "SELECT tool, task_n, task_sum, task_recent FROM stats WHERE flow = ? AND "
            "task_n > 0", (flow,), flush=flush)}


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of sorted ``values``, interpolated linearly."""
    if not values:
        return None
    pos = (len(values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def _median(recent: tuple[float, ...]) -> float:
    """The median of a task's latest durations, as :meth:`HistoryReader._read_flow` takes it."""
    ds = sorted(recent)
    m = len(ds)
    return ds[m // 2] if m % 2 else (ds[m // 2 - 1] + ds[m // 2]) / 2 if m else 0.0


def _json_list(text: str | None) -> list[Any] | None:
    """A JSON list column (``None`` when empty or not a list: such a row was written by no
    flowdsl, and reading it must not fail)."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, list) else None


def _check_scope(where: str, scope: str) -> str:
    if scope not in SCOPES:
        msg = (f"{where}(scope={scope!r}): expected 'flow' (the same flow's history) or 'all' "
               "(the same tool in any flow)")
        raise ValueError(msg)
    return scope


def _tool_stats(name: str, rows: list[dict[str, Any]]) -> ToolStats:
    def total(col: str) -> int:
        return sum(r[col] for r in rows)

    done, failed = total("completed"), total("failed")
    n, calls_sum, durs = _merge_windows((r["call_n"], r["call_sum"], r["call_recent"])
                                        for r in rows)
    maxes = [r["call_max"] for r in rows if r["call_max"] is not None]
    return ToolStats(
        tool=name, count=total("tasks"), completed=done, failed=failed,
        success_rate=done / (done + failed) if done + failed else None,
        attempts=total("attempts"), timeouts=total("timeouts"),
        mean=calls_sum / n if n else None, p50=percentile(durs, 0.5),
        p95=percentile(durs, 0.95), max=max(maxes) if maxes else None,
        name=next((r["name"] for r in rows if r["name"]), name),
        flows=tuple(sorted(r["flow"] for r in rows)))



def _figures(rows: Iterable[tuple[int, float, bytes | None]]) -> _Fig:
    """Count, mean and median of durations kept as (count, sum, latest window) rows."""
    n, total, values = _merge_windows(rows)
    return n, total / n if n else 0.0, percentile(values, 0.5) or 0.0


def _pick(idents: dict[str, str], tasks: dict[tuple[str, str], _Fig],
          tools: dict[str, _Fig], stat: str, mapped: frozenset[str] = frozenset()
          ) -> dict[str, float]:
    """Per task: its own figures in the flow (a mapped task's: one child's, its children's
    pooled under ``id[]``), else its tool's."""
    k = 1 if stat == "mean" else 2
    out: dict[str, float] = {}
    for tid, ident in idents.items():
        own = (ident, tid + "[]") if tid in mapped else (ident, tid)
        found = tasks.get(own) or tools.get(ident)
        if found and found[0]:
            out[tid] = found[k]
    return out



def _like(text: str) -> str:
    return text.replace("!", "!!").replace("%", "!%").replace("_", "!_")
