"""Bytes and time to redeploy a 20 MB function with one file changed: the whole bundle (what `nest deploy` sent
before, and still sends to an older Nest) against only the chunks the store lacks (`nest/cli/upload.py`).

Both through a real `nest up` and the CLI's code path (`upload_package` over `NestClient`), interleaved, medians.
One JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from nest.cli.packaging import build_chunked
from nest.cli.upload import upload_package
from nest.client import NestClient
from nest.contracts.chunks import Codec
from tests.bench.bench_code_fetch import generate
from tests.integration.conftest import start_platform, stop_platform


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--megabytes", type=float, default=20.0)
    args = parser.parse_args()
    times: dict[str, list[float]] = {"whole": [], "incremental": []}
    sent: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="bench-redeploy-") as scratch_name:
        scratch = Path(scratch_name)
        tree = scratch / "tree"
        files, source_bytes = generate(tree, args.megabytes)
        (tree / "nest.yaml").write_text("name: redeploy\n")
        platform = start_platform(scratch / "data", scratch / "work")
        client = NestClient(platform.url)
        try:
            upload_package(client, "redeploy", build_chunked(tree, codec=Codec.ZSTD))
            for trial in range(args.trials):
                for mode in ("whole", "incremental") if trial % 2 == 0 else ("incremental", "whole"):
                    (tree / "main.py").write_text(f"# {mode} {trial}\ndef handle(request):\n    return 'ok'\n")
                    built = build_chunked(tree, codec=Codec.ZSTD)
                    started = time.perf_counter()
                    if mode == "whole":
                        bundle = built.bundle()
                        client.deploy("redeploy", bundle)
                        sent["whole"] = len(bundle)
                    else:
                        _, report = upload_package(client, "redeploy", built)
                        sent["incremental"], sent["chunks_sent"] = report.sent_bytes, report.sent_chunks
                    times[mode].append((time.perf_counter() - started) * 1000)
            chunks = len(built.manifest.chunks)
        finally:
            client.close()
            stop_platform(platform)
    result = {
        "bench": "redeploy",
        "files": files,
        "source_mb": round(source_bytes / 1e6, 1),
        "chunks": chunks,
        "trials": args.trials,
        "whole_bundle_bytes": sent["whole"],
        "incremental_bytes": sent["incremental"],
        "incremental_chunks_sent": sent["chunks_sent"],
        "bytes_ratio": round(sent["incremental"] / sent["whole"], 4),
        "whole_ms_p50": round(statistics.median(times["whole"]), 1),
        "incremental_ms_p50": round(statistics.median(times["incremental"]), 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
