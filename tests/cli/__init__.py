"""Tests of the command line (``nudge_rag.cli``)."""
