"""agent-infra client: typed clients for env-manager and the orchestrator, and the CLI."""
