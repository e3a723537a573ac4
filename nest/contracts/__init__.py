"""Contracts: the ids, values, errors and the manifest model that cross component boundaries.

Imports nothing else of ours. Everything here is plain data or validation; no I/O.
"""
