"""The docs site stays true to the code: the guides show the quickstarts the README runs, the
command reference is what typer renders today, every page is in the site's navigation."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def _quickstart(text: str, name: str) -> str:
    m = re.search(rf"<!-- quickstart:{name} .*?-->\n```python\n(.*?)```", text, re.S)
    assert m, f"no quickstart:{name} block"
    return m.group(1)


def test_the_guides_show_the_quickstarts_the_readme_runs():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name, page in (("langchain", "langchain.md"), ("llama_index", "llama-index.md")):
        guide = (DOCS / "guides" / page).read_text(encoding="utf-8")
        assert _quickstart(guide, name) == _quickstart(readme, name)


def test_the_command_reference_is_current():
    spec = importlib.util.spec_from_file_location(
        "gen_cli_docs", ROOT / "scripts" / "gen_cli_docs.py"
    )
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    on_disk = (DOCS / "reference" / "cli-commands.md").read_text(encoding="utf-8")
    assert on_disk == gen.render(), "run: python scripts/gen_cli_docs.py"


def _nav_pages(nav: list) -> set[str]:
    pages: set[str] = set()
    for item in nav:
        for value in item.values() if isinstance(item, dict) else [item]:
            pages |= _nav_pages(value) if isinstance(value, list) else {value}
    return pages


def test_every_page_is_in_the_navigation_and_the_readme_is_short():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert pages == _nav_pages(config["nav"])
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 200
