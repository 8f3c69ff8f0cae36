"""The architecture holds: import-linter's contracts in pyproject.toml (``lint-imports``).

``layers``: dependencies run downward only (cli > eval > faces, importers, testing > engine >
labeling > state > stores > fit > errors, masking, progress). ``framework-free``: fit, stores,
state, labeling and engine import no LangChain or LlamaIndex, lazily inside a function included.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
_BIN = str(Path(sys.executable).parent)  # the venv's, even when it is not on PATH
LINT_IMPORTS = shutil.which("lint-imports", path=_BIN) or shutil.which("lint-imports")
_CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())
CONTRACTS = [c["id"] for c in _CONFIG["tool"]["importlinter"]["contracts"]]


def lint_imports(root: Path, *contracts: str) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` over the package under ``root`` (its pyproject.toml's contracts)."""
    if LINT_IMPORTS is None:
        pytest.fail("lint-imports not found: pip install 'nudge-rag[test]' (import-linter).")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    limit = [a for c in contracts for a in ("--contract", c)]
    return subprocess.run(
        [LINT_IMPORTS, "--no-cache", "--no-logo", *limit],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.parametrize("contract", CONTRACTS)
def test_contract_holds(contract: str) -> None:
    """Each contract is kept; a broken one fails with lint-imports' report of the import chains."""
    got = lint_imports(ROOT, contract)
    if got.returncode != 0:
        pytest.fail(f"lint-imports: contract {contract!r} broken\n{got.stdout}{got.stderr}")


def test_contracts_catch_upward_and_lazy_imports(tmp_path: Path) -> None:
    """On a copy of the package with an upward import at module level and a LangChain import
    inside a function, both contracts break and name the offending lines."""
    shutil.copytree(
        ROOT / "nudge_rag", tmp_path / "nudge_rag", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    checks = tmp_path / "nudge_rag" / "fit" / "checks.py"
    checks.write_text(checks.read_text() + "\nimport nudge_rag.engine.engine  # upward\n")
    base = tmp_path / "nudge_rag" / "stores" / "base.py"
    lazy = "\n\ndef _planted() -> None:\n    from langchain_core.documents import Document\n"
    base.write_text(base.read_text() + lazy)
    got = lint_imports(tmp_path)
    report = got.stdout + got.stderr
    assert got.returncode != 0, report
    assert "nudge_rag.fit.checks -> nudge_rag.engine.engine" in report, report
    assert "nudge_rag.stores.base -> langchain_core" in report, report
