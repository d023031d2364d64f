"""Cluster mode: gateway processes sharing Redis and a store (design.md section 8)."""
