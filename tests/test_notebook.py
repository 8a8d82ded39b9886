"""The example notebook runs headlessly, cell by cell, in a real Jupyter kernel."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
kernelspec = pytest.importorskip("ipykernel.kernelspec")

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "notebook.ipynb"
KERNEL = "flowdsl-test"


@pytest.fixture
def kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A kernelspec for this interpreter, installed in a temporary folder only."""
    kernelspec.install(kernel_name=KERNEL, prefix=str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter" / "share" / "jupyter"))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")  # silences jupyter_core's migration note
    return KERNEL


def _outputs(nb: object, kind: str) -> list[dict]:
    return [o for c in nb.cells if c.cell_type == "code"  # type: ignore[attr-defined]
            for o in c.get("outputs", []) if o.get("output_type") == kind]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_notebook_runs_in_a_kernel(kernel: str, tmp_path: Path) -> None:
    """Every cell runs without error; the flow, result and progress render as rich output."""
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec(kernel)
    assert spec.argv[0] == sys.executable  # this interpreter, not some other Python

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name=kernel, timeout=120,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    data = [o["data"] for o in _outputs(nb, "execute_result") + _outputs(nb, "display_data")]
    mimes = {m for d in data for m in d}
    assert "text/vnd.mermaid" in mimes  # the flow's diagram
    html = "".join(d.get("text/html", "") for d in data)
    assert "notebook_demo" in html and "completed" in html  # the result table
    assert "done" in html  # the progress display's last picture
    assert 'class="fdt"' in html  # a timeline
    assert not _outputs(nb, "error")
