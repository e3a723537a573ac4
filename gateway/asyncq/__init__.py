"""Async invocation: the durable task queue, the dispatcher and its pure cores (retry classification, AIMD, fairness).

The pure modules (`retry`, `aimd`, `fairness`) decide; they take `now` and every random draw as arguments and do
no I/O. Must not know how instances are started or where the queue's bytes live beyond its own port.
"""
