"""Trace simulator: replays a request trace through a scaling policy on a virtual clock.

Owns the trace formats (`traces`), the discrete-event model of instances and the activator queue (`model`), the
policies compared (`policies`: Nest's own `decide`, Knative's KPA, a Lambda-like keep-alive, a static minimum) and
the figures reported (`report`). Reads no clock and starts no process; `nest scale simulate` and
`tests/bench/bench_autoscaler.py` drive it.
"""
