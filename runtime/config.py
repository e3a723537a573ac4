"""The runtime's configuration: parsed once from the command line the controller builds."""

from __future__ import annotations

import argparse
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    socket: str
    code_dir: str
    handler: str
    style: str
    function: str
    version: str
    instance: str
    timeout_s: float
    concurrency: int
    memory_bytes: int
    status_fd: int
    debug: bool = False
    memory_rlimit: bool = True
    """Cap the address space (False when the backend put the instance in a memory cgroup instead)."""
    tcp_port: int = 0
    """Also listen on 127.0.0.1:PORT (benchmarks measure an instance directly with it); 0 means no."""
    package: str = ""
    """Digest of the chunked code package to materialise at `code_dir` first (`runtime/unpack.py`), if set."""
    code_url: str = ""
    """The code store to fetch it from, e.g. http://127.0.0.1:8080/api/v1/code."""


def parse_args(argv: list[str] | None = None) -> RuntimeConfig:
    parser = argparse.ArgumentParser(prog="python -m runtime", description="Serve one Nest function instance.")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--code-dir", required=True)
    parser.add_argument("--handler", default="main:handle")
    parser.add_argument("--style", choices=["native", "asgi", "lambda"], default="native")
    parser.add_argument("--function", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--instance", required=True)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--memory-bytes", type=int, default=256 * 1024**2)
    parser.add_argument("--status-fd", type=int, default=-1)
    parser.add_argument("--debug", action="store_true")
    parser.add_argument("--tcp-port", type=int, default=0)
    parser.add_argument("--package", default="", help="code package digest; fetched into --code-dir if absent")
    parser.add_argument("--code-url", default="", help="code store base URL for --package")
    parser.add_argument("--no-memory-rlimit", action="store_true", help="memory is capped by a cgroup")
    args = parser.parse_args(argv)
    return RuntimeConfig(
        socket=args.socket,
        code_dir=args.code_dir,
        handler=args.handler,
        style=args.style,
        function=args.function,
        version=args.version,
        instance=args.instance,
        timeout_s=args.timeout,
        concurrency=args.concurrency,
        memory_bytes=args.memory_bytes,
        status_fd=args.status_fd,
        debug=args.debug,
        tcp_port=args.tcp_port,
        memory_rlimit=not args.no_memory_rlimit,
        package=args.package,
        code_url=args.code_url,
    )
