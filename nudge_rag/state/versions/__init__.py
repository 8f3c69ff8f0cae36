"""The version log: every move of stored vectors, reversible bit for bit."""
