"""Backends: where instances run. `base` is the contract, `local` runs child processes on this machine."""
