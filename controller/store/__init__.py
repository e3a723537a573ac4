"""Desired state for the embedded default: functions and their immutable versions, in SQLite."""
