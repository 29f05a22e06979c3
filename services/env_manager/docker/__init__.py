"""env-manager's access to the Docker engine, one module per resource (as aiodocker does)."""
