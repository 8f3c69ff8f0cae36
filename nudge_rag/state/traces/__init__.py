"""The trace log: searches, results and feedback."""
