"""Evaluation on BEIR folders: data loading, simulation, the benchmark and the demo."""

__all__: list[str] = []
