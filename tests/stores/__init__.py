"""Tests of ``nudge_rag.stores``."""
