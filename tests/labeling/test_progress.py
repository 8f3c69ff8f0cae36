"""tqdm is optional (extras ``cli`` and ``demo``): the labeler runs without it, with no bar."""

from __future__ import annotations

import sys

import pytest

from nudge_rag.labeling.labeler import Candidate, Labeler
from nudge_rag.labeling.llm import RetryPolicy, as_llm
from nudge_rag.progress import progress_bar
from nudge_rag.testing import OpenAIStub, QrelsJudge

QRELS = {"query 1": {"d1": 2}}
POOL = [Candidate(f"d{j}", f"passage {j}") for j in range(1, 4)]


@pytest.mark.parametrize("progress", [True, False])
def test_labeling_runs_without_tqdm(monkeypatch, progress):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm raises ImportError
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    with OpenAIStub(QrelsJudge(QRELS)) as stub:
        llm = as_llm(stub.client(), model="judge-1")
        lab = Labeler(llm, policy=RetryPolicy(backoff=0.01), progress=progress)
        [grades] = lab.judge([("query 1", POOL)])
    assert grades is not None and grades.get("d1") == 2


def test_a_bar_is_drawn_when_tqdm_is_there(capsys):
    pytest.importorskip("tqdm")
    bar = progress_bar(total=2, desc="judging")
    bar.update(2)
    bar.close()
    assert "judging" in capsys.readouterr().err
    assert type(progress_bar(total=2, desc="x", disable=True)).__name__ == "_NoBar"
