"""The scale-out async queue on NATS JetStream (`nest up --queue nats://HOST:PORT`): `queue.JetStreamTaskQueue`.

Owns the streams, consumers and KV buckets under its prefix; knows nothing of the dispatcher or the HTTP API
beyond the `TaskStore` port (`gateway.asyncq.api`) it satisfies, with the SQLite queue's semantics.
"""
