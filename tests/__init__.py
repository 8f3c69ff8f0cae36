"""The test suite: one folder per package of nudge_rag; shared fixtures in conftest.py."""
