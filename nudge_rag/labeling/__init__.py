"""Labels: the judge's candidate pools, where labels come from, how far the judge can be
trusted."""

__all__: list[str] = []
