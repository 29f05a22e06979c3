"""orchestrator: the durable task queue, workflows and events behind orchestrator.v1."""
