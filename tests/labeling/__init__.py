"""Tests of ``nudge_rag.labeling``."""
