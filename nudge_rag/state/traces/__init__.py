"""The trace log: searches, results and feedback."""

__all__: list[str] = []
