"""env-manager: the Docker service stack and task containers behind env_manager.v1."""
