"""Watch the orchestrator's events: the last N minutes first, then live ones as they happen.

    python examples/watch_events.py                        # 10 minutes back, then follow (Ctrl-C)
    python examples/watch_events.py --minutes 60 --type task_failed --type workflow_failed
    python examples/watch_events.py --minutes 5 --seconds 30     # stop after 30 s
    python examples/watch_events.py --max 100                    # stop after 100 events

Replay and live delivery join with no gap and no duplicate: each event's data["seq"] is one
more than the previous one's (when no type filter is given). Addresses come from
ORCHESTRATOR_GRPC_ADDR (default 127.0.0.1:50052).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from datetime import datetime

from agent_infra import AgentInfra, InfraError, SystemEvent


def show(event: SystemEvent) -> None:
    when = datetime.fromtimestamp(event.timestamp).strftime("%H:%M:%S")
    # data is a map of strings; "seq" is the event's position in the orchestrator's log.
    details = " ".join(f"{key}={value}" for key, value in sorted(event.data.items())
                       if key != "seq" and value)
    print(f"{when} #{event.data.get('seq', '?'):>6} {event.event_type:<24} {event.resource_id}"
          f"  {details}", flush=True)


async def main(minutes: float, types: list[str], seconds: float | None,
               limit: int | None) -> int:
    since = time.time() - minutes * 60
    count = 0
    async with AgentInfra.start() as infra:
        # The stream never ends by itself: stop with a timeout, a count, or Ctrl-C. Leaving the
        # `async for` (break, or the timeout's cancellation) cancels the RPC.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                async for event in infra.stream_events(types, since=since):
                    show(event)
                    count += 1
                    if limit is not None and count >= limit:
                        break
    print(f"{count} events", file=sys.stderr)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Replay recent events, then follow live ones.")
    parser.add_argument("--minutes", type=float, default=10,
                        help="replay events from this many minutes ago (default: 10)")
    parser.add_argument("--type", dest="types", action="append", default=[],
                        help="only this event type (repeatable), e.g. task_completed")
    parser.add_argument("--seconds", type=float, default=None,
                        help="stop after this many seconds (default: run until Ctrl-C)")
    parser.add_argument("--max", dest="limit", type=int, default=None,
                        help="stop after this many events")
    args = parser.parse_args()
    try:
        sys.exit(asyncio.run(main(args.minutes, args.types, args.seconds, args.limit)))
    except KeyboardInterrupt:
        sys.exit(0)
    except InfraError as exc:
        sys.exit(f"watch_events failed: {exc}")
