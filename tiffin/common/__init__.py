"""Plumbing every component shares: Redis connections, back-off, logging, environment, probes."""
