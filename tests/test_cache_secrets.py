"""Issue 24 items 4 and 5: no secret in the result cache, and secrets registered however
they arrive (a generator, an iterator, a mapped list, a switch value, a sub-flow context, a
``Cache(key=...)`` result, an output). The canary test greps every channel: results,
``to_dict``, logs, history, ``flowdsl run --json``, the run browser's pages and API, and the
raw cache file."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support import tl

import flowdsl
from flowdsl import Secret, TaskStatus

S = TaskStatus

CANARIES = {
    "arg": "canary-arg-5e1d", "key": "canary-key-88c0", "keytext": "canary-keytext-3b7f",
    "gen1": "canary-gen1-a4d2", "gen2": "canary-gen2-c9e6", "list": "canary-list-71fa",
    "switch": "canary-switch-0d3b", "sub": "canary-sub-e25a", "mask": "canary-mask-6f90",
    "keyfn": "canary-keyfn-19ab", "it": "canary-iter-b0c4",
}

FLOW_FILE = '''
import flowdsl
from flowdsl import Cache, Flow, Secret, ctx, switch, tool

C = {canaries!r}


@tool(registry=False, cache=True)
def reveal(s):
    """A Secret argument (keyed hash); the output is its value (never stored)."""
    return s.get()


@tool(registry=False, cache=True)
def echo(x):
    flowdsl.get_logger().info("echo", x=x)
    return "echo " + x


@tool(registry=False, cache=Cache(key=lambda s: s))
def by_key(s):
    return len(s.get())


@tool(registry=False, cache=Cache(key=lambda s: s.get()))
def by_text(s):
    return len(s.get()) + 1


@tool(registry=False, cache=Cache(key=lambda tag: Secret(C["keyfn"])))
def from_key_fn(tag):
    """The key function brings a Secret of its own; the tool echoes its value."""
    return tag + " " + C["keyfn"]


@tool(registry=False, cache=True)
def use(s):
    flowdsl.get_logger().info("use", v=s.get())
    return "used " + s.get()


@tool(registry=False)
def listing():
    return [Secret(C["list"])]


@tool(registry=False)
def pick():
    return Secret(C["switch"])


@tool(registry=False, cache=Cache(mask_secrets=True))
def masked(s):
    return {{"token": s.get(), "n": 1}}


def make():
    r = reveal(Secret(C["arg"])).named("reveal")
    e = echo(r).named("echo")
    k1 = by_key(Secret(C["key"])).named("by_key")
    k2 = by_text(Secret(C["keytext"])).named("by_text")
    kf = from_key_fn("tag").named("from_key_fn")
    gen = use.map(Secret(v) for v in (C["gen1"], C["gen2"])).named("gen_map")
    it = use.map(iter([Secret(C["it"])])).named("iter_map")
    lst = listing().named("listing")
    mapped = use.map(lst).named("list_map")
    p = pick().named("pick")
    sw = switch(p, {{"nope": use(p).named("sw_case")}}, default=use(p).named("sw_default"))
    inner = Flow("inner", use(ctx("tok")).named("inner_use"),
                 context={{"tok": Secret(C["sub"])}})
    mk = masked(Secret(C["mask"])).named("masked")
    return Flow("canary", (r >> e) | k1 | k2 | kf | gen | it | (lst >> mapped) | (p >> sw)
                | inner | mk)


flow = make
'''


def _load(tmp_path: Path) -> Any:
    import importlib.util

    path = tmp_path / "canary_flow.py"
    path.write_text(FLOW_FILE.format(canaries=CANARIES))
    spec = importlib.util.spec_from_file_location("canary_flow", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _leaks(text: str) -> list[str]:
    return [name for name, value in CANARIES.items() if value in text]


def _raw(paths: list[Path]) -> str:
    return b"".join(p.read_bytes() for p in paths if p.is_file()).decode("latin-1")


class TestCanaryOverEveryChannel:
    def test_no_secret_leaves_the_run(self, tmp_path: Path,
                                      caplog: pytest.LogCaptureFixture) -> None:
        """Items 4-5: two runs (the second hitting the cache) of a flow that passes
        secrets through arguments, outputs, keys, maps, a switch and a sub-flow; no canary
        in any channel, and the cache holds only what is safe."""
        mod = _load(tmp_path)
        hist, cache = tmp_path / "h.db", tmp_path / "c.db"
        runs = []
        with flowdsl.open_history(hist) as store, caplog.at_level(logging.DEBUG, "flowdsl"):
            for _ in range(2):
                r = flowdsl.run(mod.flow(), history=store, store_outputs=True, log=True,
                                cache=str(cache))
                assert r.ok, r.error
                runs.append(r)
            store.flush()
            shown = [store.get_run(r.run_id) for r in runs]
        first, second = runs
        # The tools' own values are theirs: the outputs are not rewritten.
        assert first.outputs["reveal"] == CANARIES["arg"]
        assert second.outputs["masked"] == {"token": "***", "n": 1}  # stored masked
        assert second.tasks["by_key"].status is S.CACHED
        assert second.tasks["by_text"].status is S.CACHED
        assert second.tasks["masked"].status is S.CACHED
        assert second.tasks["from_key_fn"].status is S.COMPLETED  # its output holds one
        assert "holds a secret's value" in (first.tasks["reveal"].reason or "")
        assert "holds a secret's value" in (first.tasks["gen_map[0]"].reason or "")
        channels = {
            "to_dict": json.dumps([r.to_dict() for r in runs], default=str),
            "repr": repr(runs) + repr([r.tasks for r in runs]),
            "task logs": repr([[t.logs for t in r.tasks.values()] for r in runs]),
            "logs": "\n".join(f"{rec.getMessage()} {getattr(rec, 'flowdsl', '')}"
                              for rec in caplog.records),
            "history rows": json.dumps(shown, default=str),
            "history file": _raw(list(tmp_path.glob("h.db*"))),
            "cache file": _raw(list(tmp_path.glob("c.db*"))),
        }
        for name, text in channels.items():
            assert not _leaks(text), f"{_leaks(text)} leaked into {name}"
        assert "use v=***" in channels["logs"] or "'v': '***'" in channels["logs"] \
            or "v=***" in channels["logs"]
        assert "***" in channels["cache file"]  # the masked entry
        view = flowdsl.CacheStore(cache)
        keys = [e["key"] for e in view.entries()]
        view.close()
        assert any(k.startswith("s") for k in keys)  # keyed hashes for secret keys
        assert len(runs[0].masker.sources) >= len(CANARIES)  # type: ignore[union-attr]

    def test_cli_json(self, tmp_path: Path) -> None:
        """`flowdsl run file.py:flow --json` twice (the second with hits): no canary in its
        output, in the history file or in the cache file."""
        _load(tmp_path)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        for _ in range(2):
            done = subprocess.run(
                [sys.executable, "-m", "flowdsl", "run",
                 str(tmp_path / "canary_flow.py:flow"), "--json"],
                capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
            assert done.returncode == 0, done.stderr
            assert not _leaks(done.stdout + done.stderr)
        assert json.loads(done.stdout)["tasks"]["by_key"]["status"] == "cached"
        files = [*Path(os.environ["FLOWDSL_HISTORY"]).parent.glob("*.db*")]
        assert any(p.name.startswith("cache.db") for p in files)
        assert not _leaks(_raw(files))

    def test_run_browser_pages_and_api(self, tmp_path: Path) -> None:
        """The run browser's run page, task page data and API show no canary."""
        pytest.importorskip("uvicorn")
        pytest.importorskip("starlette")
        from ui_support import get, served

        from flowdsl._report.ui import create_app

        mod = _load(tmp_path)
        hist = tmp_path / "h.db"
        with flowdsl.open_history(hist) as store:
            r = flowdsl.run(mod.flow(), history=store, store_outputs=True, log=True,
                            cache=str(tmp_path / "c.db"))
            store.flush()
        with served(create_app(hist)) as url:
            pages = [get(f"{url}{path}") for path in
                     ("/", f"/runs/{r.run_id}", "/api/runs", f"/api/runs/{r.run_id}",
                      "/tools", "/api/tools")]
        for status, _, body in pages:
            assert status == 200
            assert not _leaks(body)
        assert "gen_map" in pages[3][2]


class TestKeysAndOutputs:
    def test_a_secret_argument_gets_a_keyed_hash(self, tmp_path: Path) -> None:
        """Item 4: the key of a call with a Secret is an HMAC under the store's key (not a
        bare SHA-256 someone could test guesses against); the same secret hits, another
        misses."""
        calls: list[str] = []
        t = tl(lambda s: calls.append(s.get()) or 1, name="login", cache=True)
        db = tmp_path / "c.db"
        for v in ("canary-one-1234", "canary-one-1234", "canary-two-5678"):
            flowdsl.run(t(Secret(v)).named("t"), cache=str(db))
        assert calls == ["canary-one-1234", "canary-two-5678"]
        store = flowdsl.CacheStore(db)
        keys = [e["key"] for e in store.entries()]
        store.close()
        assert len(keys) == 2 and all(k.startswith("s") for k in keys)
        assert not _leaks(_raw(list(tmp_path.glob("c.db*"))))

    def test_an_output_holding_a_secret_is_not_stored(self, tmp_path: Path) -> None:
        """Item 4: the output holds the value of a registered secret: not stored, and the
        record says why; the next run recomputes."""
        echo = tl(lambda s: {"header": "Bearer " + s.get()}, name="auth", cache=True)
        db = tmp_path / "c.db"
        r = flowdsl.run(echo(Secret(CANARIES["arg"])).named("a"), cache=str(db))
        assert "not cached: its output holds a secret's value" in r.tasks["a"].reason
        again = flowdsl.run(echo(Secret(CANARIES["arg"])).named("a"), cache=str(db))
        assert again.tasks["a"].status is S.COMPLETED
        assert CANARIES["arg"] not in _raw(list(tmp_path.glob("c.db*")))

    def test_a_secret_inside_bytes_is_found(self, tmp_path: Path) -> None:
        """Bytes are stored as base64, where the payload's text hides the value: the bytes
        inside the output (values and dict keys) are looked into too."""
        db = tmp_path / "c.db"
        for out in ([b"k=" + CANARIES["arg"].encode()], {CANARIES["arg"].encode(): 1}):
            t = tl(lambda s, out=out: out, name="raw", cache=True)
            r = flowdsl.run(t(Secret(CANARIES["arg"])).named("r"), cache=str(db))
            assert "holds a secret's value" in r.tasks["r"].reason
        view = flowdsl.CacheStore(db)
        assert view.entries() == []  # neither was stored
        view.close()

    def test_a_secret_only_in_the_output_is_registered_first(self, tmp_path: Path) -> None:
        """A tool that returns a Secret: it is registered when the task ends, before the
        cache entry or any record is written."""
        make = tl(lambda: [Secret("canary-made-4242")], name="make", cache=True)
        reveal = tl(lambda xs: "got " + xs[0].get(), name="rv", cache=True)
        m = make().named("make")
        r = flowdsl.run(m >> reveal(m).named("rv"), cache=str(tmp_path / "c.db"))
        assert r.output == "got canary-made-4242"
        assert "canary-made-4242" not in json.dumps(r.to_dict())
        assert "canary-made-4242" not in _raw(list(tmp_path.glob("c.db*")))


class TestDocuments:
    def test_a_document_flow_with_secrets_in_context_and_map(self, tmp_path: Path) -> None:
        """Item 5, a document: a workflow document (untrusted data, so it names no secret
        itself) reads a Secret from the run's context and maps over a context list of
        Secrets; both are registered, nothing leaks, and the cache keeps no canary."""
        reg = flowdsl.ToolRegistry()

        @reg.tool(name="login", cache=True)
        def login(token: Secret) -> str:
            return "session for " + token.get()

        @reg.tool(name="probe", cache=True)
        def probe(key: Secret) -> int:
            return len(key.get())

        doc = {"name": "doc", "tasks": [
            {"id": "login", "tool": "login", "args": {"token": {"$ctx": "token"}}},
            {"id": "probe", "tool": "probe", "map": {"$ctx": "keys"}}]}
        flow = flowdsl.load_flow(doc, reg)
        context = {"token": Secret(CANARIES["arg"]),
                   "keys": [Secret(CANARIES["gen1"]), Secret(CANARIES["gen2"])]}
        db = tmp_path / "c.db"
        runs = [flowdsl.run(flow, context=context, cache=str(db), log=True) for _ in range(2)]
        assert runs[1].tasks["probe[0]"].status is S.CACHED
        assert runs[1].tasks["login"].status is S.COMPLETED  # its output holds the secret
        text = json.dumps([r.to_dict() for r in runs]) + repr([r.tasks for r in runs])
        assert not _leaks(text)
        assert not _leaks(_raw(list(tmp_path.glob("c.db*"))))
