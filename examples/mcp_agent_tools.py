"""Tools from an MCP server, orchestrated: a fan-out over git repositories through the
official git MCP server, a join, and a summary.

An agent that wants "the state of these repositories" would call ``git_status`` and
``git_log`` once per repository, one after the other. Here the server's tools are flowdsl
tools: ``.map`` fans each out over the repositories, both maps run side by side (at most
three calls at once on the server, through ``pool=3``), read-only calls are retried if the
server falls over, and a local tool joins the answers into one summary.

Run it with ``python examples/mcp_agent_tools.py`` (needs ``pip install 'flowdsl[mcp]'
mcp-server-git`` and the ``git`` command). It makes its repositories in a temporary folder and
touches nothing else.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import flowdsl
import flowdsl.mcp
from flowdsl import tool

GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "example", "GIT_AUTHOR_EMAIL": "ex@example.com",
           "GIT_COMMITTER_NAME": "example", "GIT_COMMITTER_EMAIL": "ex@example.com"}


def make_repos(root: Path, n: int) -> list[str]:
    """``n`` small repositories: repository i has i + 1 commits, and every second one has an
    uncommitted change."""
    repos = []
    for i in range(n):
        repo = root / f"service-{i}"
        repo.mkdir()
        subprocess.run(["git", "init", "-q", "-b", "main"], cwd=repo, check=True, env=GIT_ENV)
        for c in range(i + 1):
            (repo / "CHANGELOG").write_text(f"release {c}\n")
            subprocess.run(["git", "add", "CHANGELOG"], cwd=repo, check=True, env=GIT_ENV)
            subprocess.run(["git", "commit", "-qm", f"release {c}"], cwd=repo, check=True,
                           env=GIT_ENV)
        if i % 2:
            (repo / "CHANGELOG").write_text("work in progress\n")
        repos.append(str(repo))
    return repos


@tool(registry=False)
def join(repos: list[str], statuses: list[str], logs: list[str]) -> list[dict[str, object]]:
    """One row per repository from the server's two answers."""
    return [{"repo": Path(repo).name,
             "clean": "nothing to commit" in status,
             "commits": log.count("Commit:") or log.count("commit ")}
            for repo, status, log in zip(repos, statuses, logs)]


@tool(registry=False)
def summary(rows: list[dict[str, object]]) -> str:
    """The report an agent would hand back."""
    dirty = [r["repo"] for r in rows if not r["clean"]]
    lines = [f"{r['repo']:<12} {'clean' if r['clean'] else 'CHANGED':<8} "
             f"{r['commits']} commit(s)" for r in rows]
    lines.append(f"{len(rows)} repositories, {len(dirty)} with uncommitted changes: "
                 f"{', '.join(map(str, dirty)) or 'none'}")
    return "\n".join(lines)


def main() -> None:
    server = shutil.which("mcp-server-git", path=str(Path(sys.executable).parent)) \
        or shutil.which("mcp-server-git")
    if server is None or shutil.which("git") is None:
        sys.exit("this example needs the git MCP server and git: pip install mcp-server-git")
    with tempfile.TemporaryDirectory() as tmp, \
            flowdsl.mcp.connect(server, name="git", pool=3, timeout=30) as git:
        repos = make_repos(Path(tmp), 6)
        print(f"the git server offers {len(git)} tools: {', '.join(sorted(git))}")
        print(f"git_status{git.git_status.signature}: "
              f"{(git.git_status.__doc__ or '').splitlines()[0]}")
        statuses = git.git_status.map(repos)
        logs = git.git_log.map(repos, max_count=20)
        flow = summary(join(repos, statuses, logs))

        started = time.perf_counter()
        result = flowdsl.run(flow, history=False)
        took = time.perf_counter() - started
        result.raise_for_error()
        print(result.output)
        print(f"{2 * len(repos)} MCP calls ran as one parallel flow in {took:.2f}s "
              f"({result.status})")


if __name__ == "__main__":
    main()
