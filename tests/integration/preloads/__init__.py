"""Modules the integration tests name as a pool's preloads."""
