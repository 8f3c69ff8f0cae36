"""The fine-tune engine: label, split, fit, prove, apply; the watch loop."""

__all__: list[str] = []
