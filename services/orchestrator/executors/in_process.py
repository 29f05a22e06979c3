"""The Executor protocol served by coroutines of this process, with no backend at all."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from .protocol import Execution, ExecutionOutcome

Handler = Callable[[Execution], Awaitable[ExecutionOutcome]]


class InProcessExecutor:
    """Runs tasks as coroutines in this process: for tests and the dispatch benchmark."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler

    def supports(self, task_class: str) -> str:
        return ""

    async def execute(self, execution: Execution) -> ExecutionOutcome:
        return await self._handler(execution)

    async def cancel(self, execution_id: str, task_class: str) -> None:
        return None  # the scheduler cancels the coroutine itself

    async def wait_until_available(self, task_class: str) -> None:
        return None

    async def health(self) -> dict[str, str]:
        return {"in-process": "SERVING"}

    async def close(self) -> None:
        return None
