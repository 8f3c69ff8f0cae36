"""Every cookbook notebook runs top to bottom, offline, and its own closing asserts hold.

Each notebook is executed with nbclient in a fresh temporary working folder, by a kernel of this
very interpreter (a kernelspec written for ``sys.executable``, so no user-wide Jupyter setup is
needed). The notebooks find the shared BEIR data through ``NUDGE_RAG_DATA``; without it they raise
``SkipNotebook`` in their first cell, which is reported here as a skip.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from nudge_rag.eval.data import shared_data_dir

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402 (after the importorskips)
from jupyter_client.manager import KernelManager  # noqa: E402
from nbclient.exceptions import CellExecutionError  # noqa: E402

COOKBOOK = Path(__file__).resolve().parents[2] / "cookbook"
NOTEBOOKS = sorted(COOKBOOK.glob("*.ipynb"))
CELL_TIMEOUT_S = 300
KERNEL = "python3"


@pytest.fixture(scope="session")
def kernel_specs(tmp_path_factory: pytest.TempPathFactory) -> KernelSpecManager:
    """A kernelspec named ``python3`` that starts ``sys.executable -m ipykernel_launcher``."""
    from ipykernel.kernelspec import write_kernel_spec

    root = tmp_path_factory.mktemp("kernels")
    write_kernel_spec(root / KERNEL)
    manager = KernelSpecManager(kernel_dirs=[str(root)])
    argv = manager.get_kernel_spec(KERNEL).argv
    assert argv[0] == sys.executable, argv
    return manager


def test_the_cookbook_has_its_notebooks_and_a_readme():
    names = [p.name for p in NOTEBOOKS]
    assert names == [
        "01_langchain_quickstart.ipynb",
        "02_llamaindex_quickstart.ipynb",
        "03_cold_start_synthetic.ipynb",
        "04_nudge_rag_vs_nudge_ft.ipynb",
        "05_langgraph_agent_feedback.ipynb",
        "06_phoenix_history.ipynb",
    ]
    readme = (COOKBOOK / "README.md").read_text(encoding="utf-8")
    assert all(name in readme for name in names)


def _client(path: Path, workdir: Path, kernel_specs: KernelSpecManager):
    """A client for the notebook at ``path`` with its committed outputs cleared."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    client = nbclient.NotebookClient(
        nb,
        km=KernelManager(kernel_name=KERNEL, kernel_spec_manager=kernel_specs),
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(workdir)}},
    )
    # nbclient shuts down only the kernels of managers it made itself; without this each
    # notebook's kernel (0.5-1 GB) lived until the end of the test session
    client.owns_km = True
    return client


@pytest.mark.integration
def test_without_the_data_a_notebook_stops_in_its_first_cell_with_a_skip_message(
    tmp_path: Path, kernel_specs: KernelSpecManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "no_data"
    empty.mkdir()
    monkeypatch.setenv("NUDGE_RAG_DATA", str(empty))
    client = _client(NOTEBOOKS[0], tmp_path, kernel_specs)
    km = client.km
    with pytest.raises(CellExecutionError) as info:
        client.execute()
    assert info.value.ename == "SkipNotebook"
    assert "NUDGE_RAG_DATA" in info.value.evalue
    ran = [c for c in client.nb.cells if c.cell_type == "code" and c.get("execution_count")]
    assert len(ran) == 1
    assert km is not None and not km.is_alive()  # its kernel was shut down, not left running


@pytest.mark.integration
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_its_asserts_hold(
    path: Path,
    tmp_path: Path,
    kernel_specs: KernelSpecManager,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = shared_data_dir()
    if data is None:
        pytest.skip("../shared/data not found (set NUDGE_RAG_DATA to the shared BEIR data folder)")
    # the kernel inherits this environment: the data folder, no network, no real LLM
    monkeypatch.setenv("NUDGE_RAG_DATA", str(data.resolve()))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)

    client = _client(path, tmp_path, kernel_specs)
    nb = client.nb
    try:
        client.execute()
    except CellExecutionError as exc:
        if exc.ename == "SkipNotebook":
            pytest.skip(exc.evalue)
        raise
    stdout = [
        o.get("text", "")
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "stream"
    ]
    assert any("notebook ran in" in s for s in stdout), "the last cell did not run"
