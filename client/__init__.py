"""agent-infra client: typed clients for env-manager and the orchestrator, and the CLI.

The exports are listed once, in __init__.pyi, and load on first use: the orchestrator imports
env-manager's client without paying for AgentInfra, the CLI's helpers and the rest at start-up.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
