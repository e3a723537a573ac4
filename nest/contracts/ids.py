"""Identifiers that cross component boundaries, as `NewType`s so mypy keeps them apart."""

from __future__ import annotations

from typing import NewType

FunctionName = NewType("FunctionName", str)
"""A DNS-label-like function name: `hello`, `resize-image`."""

VersionId = NewType("VersionId", str)
"""An immutable version: the first 12 hex digits of the digest of code and configuration."""

InstanceId = NewType("InstanceId", str)
"""One running instance of one version: `hello-3f2a9c1b7d4e-1`."""

InvocationId = NewType("InvocationId", str)
"""One invocation, given by the gateway and carried to the runtime and the logs."""
