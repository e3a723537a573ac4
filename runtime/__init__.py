"""Runtime: what runs inside an instance: the invocation server, handler adapters, per-invocation logs and timing.

Must not know about the control plane: it is started with its configuration and reports readiness on a pipe.
"""
