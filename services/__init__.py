"""The agent-infra daemons: env-manager and orchestrator, on one shared runtime."""
