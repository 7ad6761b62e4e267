"""Throughput benchmark of the suite models."""
