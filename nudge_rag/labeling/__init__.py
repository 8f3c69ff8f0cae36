"""Labels: where they come from and how far the judge can be trusted."""
