"""Handler adapters: how each `handler_style` turns an HTTP request into a call and its result into a response."""
