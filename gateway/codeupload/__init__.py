"""Uploading code packages a chunk at a time: only the chunks the store lacks travel (`api.py`)."""
