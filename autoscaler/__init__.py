"""Autoscaler: turns per-version traffic into a desired instance count, with the reason for it.

The decision logic is pure (no I/O, no clock reads, no asyncio); `loop.py` is the one async module. Must not know
about HTTP, Kubernetes or processes.
"""
