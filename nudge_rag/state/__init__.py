"""What persists: traces, versions, records, on SQLite (a folder) or Postgres (a URL)."""

__all__: list[str] = []
