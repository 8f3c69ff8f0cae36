"""Tests of ``nudge_rag.state``."""
