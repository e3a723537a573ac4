"""Controller: desired state (functions and their immutable versions), the code store, and reconciling the
desired instance counts onto a backend (`local`: child processes on this machine).

Must not know about request routing or scaling decisions: it publishes routes and endpoints through the
`RoutePublisher` port it owns, and takes desired counts from whoever calls `scale()`.
"""
