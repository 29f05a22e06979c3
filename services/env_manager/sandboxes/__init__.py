"""Sandbox sessions: long-lived containers of a workload class that run many commands."""
