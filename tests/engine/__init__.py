"""Tests of ``nudge_rag.engine``."""
