"""Tests of ``nudge_rag.importers``."""
