"""API contracts as `.proto` files (`metrics.proto`: gateway traffic for remote autoscalers) and their stubs.

`_generated/` holds what `scripts/gen_protos.sh` writes from them with grpcio-tools (messages and `.pyi` types);
it is never edited by hand and not linted. Imports nothing else of ours; no I/O.
"""
