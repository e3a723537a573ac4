"""Sandbox: packing many low-traffic functions into shared instances (a later issue). Nothing here yet."""
