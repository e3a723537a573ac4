"""Nest: a serverless function platform.

This package holds the contracts every component may import (`nest.contracts`), the handler SDK that user code
imports (`from nest import Request, Response`), the CLI and its HTTP client (`nest.cli`, `nest.client`) and the
composition roots that wire components together (`nest.wiring`). It knows nothing of how any component works
inside.

The SDK names below are the one re-export in the tree: users write `from nest import Response`, so the package
root must offer it. `nest.sdk` imports only the standard library, so importing `nest.contracts` stays cheap.
"""

from nest.sdk import NonRetryable, Request, Response, Throttled

__all__ = ["NonRetryable", "Request", "Response", "Throttled"]
