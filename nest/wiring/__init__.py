"""Composition roots: the only code that knows concrete classes. `embedded.py` is `nest up`."""
