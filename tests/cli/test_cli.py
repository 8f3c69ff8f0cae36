"""The CLI: every command documented with an example, the demo end to end, one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nudge_rag.cli import app
from tests.shared_data import dataset

runner = CliRunner()
COMMANDS = [["demo"], ["finetune"], ["eval"], ["versions"], ["rollback"], ["verify"],
            ["repair"], ["bench"], ["traces", "stats"], ["traces", "export"],
            ["traces", "import"], ["watch"]]  # fmt: skip


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


@pytest.mark.integration
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

    from nudge_rag.eval.data import shared_data_dir

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


# -- one-line errors, read-only folders, verify and repair (issue 11, items 4 and 11) -----------


def _llama_store(folder: Path) -> list[str]:
    """A store built by the LlamaIndex face, nudged once; returns the CLI's --store arguments."""
    import numpy as np
    from llama_index.core.schema import TextNode

    from nudge_rag.llama_index import NudgedVectorStore

    store = NudgedVectorStore.from_defaults(persist_dir=str(folder), collection_name="docs")
    vecs = np.eye(4, dtype=np.float32)
    store.add([TextNode(text=f"t{i}", id_=f"n{i}", embedding=vecs[i].tolist()) for i in range(4)])
    store.nudge_state.record_search("q", vecs[0], 2, None, ["n0"], [1.0])
    store.apply_vectors({"n0": np.array([0.6, 0.8, 0, 0], dtype=np.float32)}, note="by hand")
    store.nudge_state.close()
    return ["--store", str(folder), "--collection", "docs"]


def _one_line_error(res, *needles: str) -> str:
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("damage", ["garbage", "cut short"])
def test_a_damaged_version_log_is_one_line_and_repairable(tmp_path, damage):
    args = _llama_store(tmp_path)
    log = tmp_path / "nudge_state" / "docs" / "versions.sqlite"
    data = log.read_bytes()
    log.write_bytes(b"\x00garbage" * 512 if damage == "garbage" else data[: len(data) // 2])

    for cmd in (["versions"], ["rollback", "--to", "0"]):
        _one_line_error(runner.invoke(app, [*cmd, *args]), "versions.sqlite", "damaged")
    res = runner.invoke(app, ["verify", *args])
    assert res.exit_code == 1 and "damaged" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["repair", *args])
    _one_line_error(res, "there is none to trust", "--adopt-store")
    res = runner.invoke(app, ["repair", *args, "--adopt-store"])
    assert res.exit_code == 0, res.output
    assert "moved the unusable version log aside" in res.output and "ok: " in res.output
    res = runner.invoke(app, ["versions", *args])
    assert res.exit_code == 0 and res.output.splitlines()[-1].split()[:2] == ["*", "0"]


@pytest.mark.parametrize("damage", ["garbage", "cut short", "empty"])
def test_a_damaged_trace_log_is_one_line(tmp_path, damage):
    args = _llama_store(tmp_path)
    traces = tmp_path / "nudge_state" / "docs" / "traces.sqlite"
    data = traces.read_bytes()
    cut = {"garbage": b"garbage!" * 600, "cut short": data[:1000], "empty": b""}[damage]
    traces.write_bytes(cut)
    res = runner.invoke(app, ["traces", "stats", *args])
    _one_line_error(res, "traces.sqlite")


def test_a_lost_version_log_is_refused_by_every_command(tmp_path):
    args = _llama_store(tmp_path)
    (tmp_path / "nudge_state" / "docs" / "versions.sqlite").unlink()
    _one_line_error(runner.invoke(app, ["versions", *args]), "missing", "repair --adopt-store")
    _one_line_error(runner.invoke(app, ["rollback", *args]), "missing", "records a version log")
    res = runner.invoke(app, ["repair", *args, "--adopt-store"])
    assert res.exit_code == 0 and "started a new version log" in res.output, res.output


def test_verify_then_repair_a_store_changed_behind_the_logs_back(tmp_path):
    import chromadb

    args = _llama_store(tmp_path)
    res = runner.invoke(app, ["verify", *args])
    assert res.exit_code == 0 and res.output.startswith("ok: the store is at version 1"), res.output
    col = chromadb.PersistentClient(path=str(tmp_path)).get_collection("docs")
    col.update(ids=["n0"], embeddings=[[0.0, 0.0, 0.0, 1.0]])  # not through nudge-rag

    res = runner.invoke(app, ["verify", *args])
    assert res.exit_code == 1
    assert "does not hold the vectors of version 1" in res.output and "e.g. id 'n0'" in res.output
    res = runner.invoke(app, ["repair", *args])
    assert res.exit_code == 0, res.output
    assert "done: rewrote 1 row(s) of the store with version 1's vectors" in res.output
    assert runner.invoke(app, ["verify", *args]).exit_code == 0


def _make_read_only(folder: Path) -> None:
    for path in [*sorted(folder.rglob("*"), reverse=True), folder]:
        path.chmod(0o555 if path.is_dir() else 0o400)


def _run_without_write_access(args: list[str]) -> subprocess.CompletedProcess:
    """The CLI in a process that file permissions bind (root too: CAP_DAC_OVERRIDE dropped)."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: cannot take write access away")
        prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]
    res = subprocess.run(
        [*prefix, sys.executable, "-m", "nudge_rag.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "ANONYMIZED_TELEMETRY": "False"},
    )
    if res.returncode != 0 and res.stderr.startswith("setpriv:"):
        pytest.skip(f"cannot drop capabilities here: {res.stderr.strip()}")
    return res


@pytest.mark.integration
def test_read_only_commands_work_on_a_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    args = _llama_store(folder)
    out = tmp_path / "out"
    out.mkdir()
    _make_read_only(folder)
    try:
        res = _run_without_write_access(["versions", *args])
        assert res.returncode == 0, res.stderr
        assert res.stdout.splitlines()[-1].startswith("*") and "by hand" in res.stdout
        res = _run_without_write_access(["traces", "stats", *args])
        assert res.returncode == 0 and "traces: 1" in res.stdout, res.stderr
        res = _run_without_write_access(["traces", "export", *args, "--out", str(out / "t.jsonl")])
        assert res.returncode == 0 and "wrote 1 traces" in res.stdout, res.stderr

        for cmd in (["rollback", "--to", "0"], ["finetune"]):
            res = _run_without_write_access([*cmd, *args])
            assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
            lines = res.stderr.strip().splitlines()
            assert len(lines) == 1 and "not writable by this user" in lines[0], lines
    finally:
        for path in [folder, *folder.rglob("*")]:
            path.chmod(0o700 if path.is_dir() else 0o600)


def test_watch_runs_rounds_and_logs_each_decision(tmp_path):
    args = _llama_store(tmp_path / "w")
    res = runner.invoke(app, ["watch", *args, "--min-new-labels", "1", "--rounds", "1"])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines() == [  # applied outside the loop: guarded from now on
        "round 1: guard_wait (version 1): 0 searches labelled since its fit ranked, judging "
        "from 30, keeping at 300",
    ]
    log = tmp_path / "w" / "nudge_state" / "docs" / "watch.jsonl"
    assert [json.loads(x)["decision"] for x in log.read_text().splitlines()] == ["guard_wait"]
    res = runner.invoke(app, ["watch", *args, "--every", "soon", "--rounds", "1"])
    _one_line_error(res, "every: found 'soon'")
