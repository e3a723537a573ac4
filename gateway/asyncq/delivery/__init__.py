"""Delivering async results: callbacks (`X-Callback-Url`) and destinations (`async.on_success` / `on_failure`).

A finished task's deliveries are written to a durable outbox *before* the task is settled, so a crash can at
worst deliver twice, never lose a record; a worker sends them with retries (another function, a signed webhook,
a NATS subject) and keeps the ones that keep failing, marked failed, for inspection. `records` is pure.
"""
