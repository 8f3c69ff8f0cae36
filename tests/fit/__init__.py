"""Tests of ``nudge_rag.fit``."""
