"""The math: NUDGE-M/N, the corpus it ranks against, metrics, input checks; numpy and torch only."""

__all__: list[str] = []
