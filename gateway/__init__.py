"""Gateway: HTTP triggers and routing, the activator, per-function traffic metrics and the control API's HTTP face.

Must not know about Kubernetes or how instances are started: it learns routes and endpoints through the
`RoutingTable` the controller publishes into, and asks for capacity through the `DemandSignal` port.
"""
