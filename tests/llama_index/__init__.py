"""Tests of ``nudge_rag.llama_index``."""
