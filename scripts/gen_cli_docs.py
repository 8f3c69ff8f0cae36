"""Write docs/reference/cli-commands.md from the typer app (tests/docs/test_docs.py checks it is
current): ``python scripts/gen_cli_docs.py``."""

from __future__ import annotations

import sys
from pathlib import Path

import typer.cli
import typer.main

OUT = Path(__file__).resolve().parents[1] / "docs" / "reference" / "cli-commands.md"


def render() -> str:
    """The reference of every command, as typer renders its help."""
    from nudge_rag.cli import app

    command = typer.main.get_command(app)
    ctx = typer.models.Context(command)
    text = typer.cli.get_docs_for_click(
        obj=command, ctx=ctx, name="nudge-rag", title="Command reference"
    )
    return text.strip() + "\n"


if __name__ == "__main__":
    OUT.write_text(render(), encoding="utf-8")
    sys.stdout.write(f"wrote {OUT}\n")
