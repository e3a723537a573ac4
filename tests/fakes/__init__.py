"""Typed fakes, one per port (fakes over mocks)."""
