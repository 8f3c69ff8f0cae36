"""Evaluation on BEIR folders: data loading, simulation, the benchmark and the demo."""
