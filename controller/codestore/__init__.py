"""The code store: taking in uploaded packages safely, content-addressed on disk."""
