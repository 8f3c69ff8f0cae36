"""Tests of ``nudge_rag.langchain``."""
