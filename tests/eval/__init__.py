"""Tests of ``nudge_rag.eval``."""
