"""The README, the docs site and the cookbook notebooks, executed."""
