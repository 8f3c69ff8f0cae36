"""The CLI: every command documented with an example, the demo end to end, one-line errors."""

from __future__ import annotations

import json

import pytest
from shared_data import dataset
from typer.testing import CliRunner

from nudge_rag.cli import app

runner = CliRunner()
COMMANDS = [["demo"], ["finetune"], ["eval"], ["versions"], ["rollback"], ["bench"],
            ["traces", "stats"], ["traces", "export"]]  # fmt: skip


@pytest.mark.parametrize("cmd", COMMANDS, ids=" ".join)
def test_every_command_has_help_with_an_example(cmd):
    res = runner.invoke(app, [*cmd, "--help"])
    assert res.exit_code == 0, res.output
    assert "Example:" in res.output and "nudge-rag " + cmd[0] in res.output


def test_missing_store_is_one_clear_line(tmp_path):
    res = runner.invoke(app, ["versions", "--store", str(tmp_path / "nope")])
    assert res.exit_code == 1
    assert res.output.strip().splitlines() == [
        f"error: --store {tmp_path / 'nope'}: no nudge-rag store there "
        "(expected a Chroma folder and nudge_state/ with versions.sqlite)."
    ]
    assert "Traceback" not in res.output


def test_demo_refuses_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "mine.txt").write_text("precious")
    res = runner.invoke(app, ["demo", "--state", str(tmp_path), "--quiet"])
    assert res.exit_code == 1 and "not a demo store" in res.output
    assert (tmp_path / "mine.txt").read_text() == "precious"


def test_demo_then_versions_eval_rollback_traces(tmp_path):
    dataset("scifact")  # skips without ../shared
    state, plot = tmp_path / "demo", tmp_path / "demo.png"
    res = runner.invoke(app, ["demo", "--state", str(state), "--plot", str(plot), "--quiet"])
    assert res.exit_code == 0, res.output
    lines = {ln.split()[0]: ln.split() for ln in res.output.splitlines() if ln.strip()}
    before, after = float(lines["NDCG@10"][1]), float(lines["NDCG@10"][2])
    assert before == pytest.approx(0.6451, abs=0.01)  # the published MiniLM baseline
    assert after > before + 0.1
    assert plot.stat().st_size > 10_000

    res = runner.invoke(app, ["versions", "--store", str(state)])
    assert res.exit_code == 0 and "nudge-n" in res.output
    assert res.output.splitlines()[-1].startswith("*")  # version 1 is current

    from nudge_rag.core.data import shared_data_dir

    data = str(shared_data_dir() / "scifact")
    res = runner.invoke(app, ["eval", "--store", str(state), "--data", data])
    tuned = float(res.output.split("NDCG@10")[1].split()[0])
    assert tuned > before + 0.1

    res = runner.invoke(app, ["rollback", "--store", str(state), "--to", "0"])
    assert res.exit_code == 0 and "version 0" in res.output
    res = runner.invoke(app, ["eval", "--store", str(state), "--data", data])
    # Chroma's HNSW is approximate: after in-place updates near-ties may reshuffle slightly.
    assert float(res.output.split("NDCG@10")[1].split()[0]) == pytest.approx(before, abs=0.01)

    out = tmp_path / "traces.jsonl"
    res = runner.invoke(app, ["traces", "export", "--store", str(state), "--out", str(out)])
    assert res.exit_code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(dataset("scifact").qrels["train"])
    res = runner.invoke(app, ["traces", "stats", "--store", str(state)])
    assert f"traces: {len(rows)}" in res.output


def test_versions_and_rollback_of_a_store_built_by_the_llama_index_face(tmp_path):
    """``from_defaults`` keeps its state in nudge_state/<collection>/: the CLI finds it."""
    import numpy as np
    from llama_index.core.schema import TextNode

    from nudge_rag.llama_index import NudgedVectorStore

    store = NudgedVectorStore.from_defaults(persist_dir=str(tmp_path), collection_name="docs")
    vecs = np.eye(4, dtype=np.float32)
    store.add([TextNode(text=f"t{i}", id_=f"n{i}", embedding=vecs[i].tolist()) for i in range(4)])
    nudged = np.array([0.6, 0.8, 0, 0], dtype=np.float32)
    assert store.apply_vectors({"n0": nudged}, note="by hand") == 1
    store.nudge_state.close()

    args = ["--store", str(tmp_path), "--collection", "docs"]
    res = runner.invoke(app, ["versions", *args])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[-1].startswith("*") and "by hand" in res.output
    res = runner.invoke(app, ["rollback", *args, "--to", "0"])
    assert res.exit_code == 0 and "version 0" in res.output

    again = NudgedVectorStore.from_defaults(persist_dir=str(tmp_path), collection_name="docs")
    np.testing.assert_allclose(again.get_vectors(["n0"])[0], vecs[0], atol=1e-7)
