"""The version log: every move of stored vectors, reversible bit for bit."""

__all__: list[str] = []
