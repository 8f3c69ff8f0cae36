"""Tests that run both faces (LangChain and LlamaIndex) side by side."""
