"""Dependency graph: slots, coupling rules and groups."""
