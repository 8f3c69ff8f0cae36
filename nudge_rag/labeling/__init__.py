"""Labelling: the judge's candidate pools, the judge, its cache and its audit."""
