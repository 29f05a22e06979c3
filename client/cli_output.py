"""How the `agent-infra` CLI prints: rich on a terminal, stable plain text when piped, or JSON.

Three modes, chosen once per command:
  * ``--json``: machine-readable. One JSON document for a snapshot, one JSON object per line
    for a stream. Nothing else goes to stdout.
  * terminal (stdout is a TTY): rich tables, colours, live progress bars.
  * piped: plain text for grep and awk. Tables are whitespace-aligned columns under an
    upper-case header line, one row per line, never wrapped or truncated; streams print one
    line per event. No colour, no escape codes.

Diagnostics (errors, hints) always go to stderr.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import IO, Any, Self

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from .env_manager_models import ImagePullProgress, ServiceStatusUpdate

__all__ = [
    "Output",
    "PullDisplay",
    "StartDisplay",
    "WorkflowDisplay",
    "format_bytes",
    "format_duration_ms",
    "format_span",
    "format_time",
    "format_when",
    "to_jsonable",
]

#: Colours by state word, for the terminal only.
STATE_STYLES = {
    "healthy": "green", "running": "green", "completed": "green", "complete": "green",
    "serving": "green", "stopped": "dim", "not running": "dim", "pending": "cyan",
    "starting": "yellow", "downloading": "yellow", "extracting": "yellow",
    "unhealthy": "red", "failed": "red", "error": "red", "cancelled": "magenta",
    "not_serving": "red", "unreachable": "red",
}


def to_jsonable(value: Any) -> Any:
    """Dataclasses (the clients' results), tuples and mappings as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    return str(value)


def format_time(unix: float | int | None) -> str:
    """Unix seconds as local ``YYYY-MM-DD HH:MM:SS``; ``-`` for 0 / None (not reached)."""
    if not unix:
        return "-"
    return dt.datetime.fromtimestamp(float(unix)).strftime("%Y-%m-%d %H:%M:%S")


def format_when(unix: float | int | None, *, short: bool) -> str:
    """`format_time`, or with `short` (terminal tables) only ``HH:MM:SS`` for today."""
    if not unix:
        return "-"
    moment = dt.datetime.fromtimestamp(float(unix))
    if short and moment.date() == dt.date.today():
        return moment.strftime("%H:%M:%S")
    return moment.strftime("%Y-%m-%d %H:%M:%S" if not short else "%Y-%m-%d %H:%M")


def format_duration_ms(ms: float | int | None) -> str:
    """Milliseconds as ``850ms``, ``12.3s``, ``4m05s``, ``2h03m``; ``-`` for 0 / None."""
    if not ms:
        return "-"
    seconds = float(ms) / 1000
    if seconds < 1:
        return f"{float(ms):.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    return format_span(int(seconds), days=False)


def format_span(seconds: int, *, days: bool = True) -> str:
    """Whole seconds as ``45s``, ``4m05s``, ``2h03m`` and, with `days`, ``3d04h``."""
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400 or not days:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def format_bytes(count: float | int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}GiB"  # pragma: no cover - the loop always returns


def styled(state: str) -> Text:
    return Text(state, style=STATE_STYLES.get(state.lower().split(":")[0].strip(), ""))


class Output:
    """Where a command's results go, and in which of the three modes."""

    def __init__(self, *, json_mode: bool = False, stdout: IO[str] | None = None,
                 stderr: IO[str] | None = None) -> None:
        self.json_mode = json_mode
        self._stdout = stdout
        self._stderr = stderr
        # force_terminal=None: rich decides from isatty (and FORCE_COLOR / NO_COLOR / TERM).
        self.console = Console(file=stdout, highlight=False, soft_wrap=True)
        self.err_console = Console(file=stderr, stderr=stderr is None, highlight=False,
                                   soft_wrap=True)

    @property
    def stdout(self) -> IO[str]:
        return self._stdout or sys.stdout

    @property
    def stderr(self) -> IO[str]:
        return self._stderr or sys.stderr

    @property
    def rich(self) -> bool:
        """True for the terminal mode: tables, colours and live displays."""
        return not self.json_mode and self.console.is_terminal

    # -- raw writes ---------------------------------------------------------------------------

    def line(self, text: str = "") -> None:
        """One line of plain text on stdout, exactly as given (no markup, no wrapping)."""
        self.stdout.write(text + "\n")
        self.stdout.flush()

    def note(self, text: str) -> None:
        """A human remark on stderr (progress, hints): kept out of stdout's data."""
        if self.err_console.is_terminal:
            self.err_console.print(Text(text, style="dim"))
        else:
            self.stderr.write(text + "\n")
            self.stderr.flush()

    def error(self, text: str) -> None:
        self.stderr.write(f"agent-infra: {text}\n")
        self.stderr.flush()

    def json_doc(self, value: Any) -> None:
        """One JSON document, pretty-printed."""
        self.stdout.write(json.dumps(to_jsonable(value), indent=2, sort_keys=True) + "\n")
        self.stdout.flush()

    def json_line(self, value: Any) -> None:
        """One compact JSON object per line (streams)."""
        self.stdout.write(json.dumps(to_jsonable(value), sort_keys=True) + "\n")
        self.stdout.flush()

    def print(self, renderable: RenderableType) -> None:
        """A rich renderable on the terminal (callers check `rich` first)."""
        self.console.print(renderable)

    # -- tables -------------------------------------------------------------------------------

    def table(self, columns: Sequence[str], rows: Iterable[Sequence[object]], *,
              title: str | None = None, state_column: int | None = None,
              empty: str | None = None) -> None:
        """A table: rich on a terminal; aligned columns under an upper-case header otherwise.

        `state_column` is coloured by state on the terminal. Cells are str()-ed; ``None`` is
        shown as ``-``. `empty` is printed (as a note) instead of a header with no rows.
        """
        cells = [["-" if cell is None or cell == "" else str(cell) for cell in row]
                 for row in rows]
        if not cells and empty is not None:
            self.note(empty)
            return
        if self.rich:
            table = Table(title=title, title_justify="left", title_style="bold",
                          header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False,
                          show_edge=False, padding=(0, 1), collapse_padding=True)
            # Only the last column (messages, errors) folds: ids, states, numbers and times
            # stay whole.
            for index, column in enumerate(columns):
                last = index == len(columns) - 1
                table.add_column(column.upper(), no_wrap=not last, overflow="fold",
                                 ratio=1 if last else None)
            for row in cells:
                rendered: list[RenderableType] = [
                    styled(cell) if index == state_column else Text(cell)
                    for index, cell in enumerate(row)]
                table.add_row(*rendered)
            self.console.print(table)
            return
        if title:
            self.line(f"# {title}")
        header = [column.upper() for column in columns]
        widths = [max(len(header[i]), *(len(row[i]) for row in cells)) if cells
                  else len(header[i]) for i in range(len(columns))]
        for row in (header, *cells):
            padded = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
            self.line("  ".join([*padded, row[-1]]).rstrip())


# --- live displays -------------------------------------------------------------------------------


class StartDisplay:
    """Progress of StartServices: a bar for the whole plan and a state table per service.

    Terminal: a live rich display (bar + table) redrawn as updates arrive, left on screen at
    the end. Piped: one line per update, ``[ 40%] NAME  STATE  message``. JSON: each update as
    a JSON line.
    """

    def __init__(self, out: Output, title: str = "starting services") -> None:
        self.out = out
        self.states: dict[str, ServiceStatusUpdate] = {}
        self.began: dict[str, float] = {}
        self.ended: dict[str, float] = {}
        self._live: Live | None = None
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        if out.rich:
            self._progress = Progress(
                SpinnerColumn(finished_text="[green]✓"),
                TextColumn("[bold]{task.description}"),
                BarColumn(bar_width=40),
                TaskProgressColumn(),
                TimeElapsedColumn(),
                console=out.console,
            )
            self._task = self._progress.add_task(title, total=100)
            self._live = Live(self._render(), console=out.console, refresh_per_second=10,
                              transient=False)

    def __enter__(self) -> StartDisplay:
        if self._live is not None:
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            if self._progress is not None and self._task is not None and not exc[0]:
                self._progress.update(self._task, completed=100)
            self._live.update(self._render())
            self._live.stop()

    def update(self, update: ServiceStatusUpdate) -> None:
        now = time.monotonic()
        self.began.setdefault(update.service_name, now)
        if update.status in {"healthy", "unhealthy", "stopped"}:
            self.ended[update.service_name] = now
        self.states[update.service_name] = update
        if self.out.json_mode:
            self.out.json_line(update)
        elif self._live is not None and self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=update.progress)
            self._live.update(self._render())
        else:
            self.out.line(f"[{update.progress:3d}%] {update.service_name:<16} "
                          f"{update.status:<9} {update.message}".rstrip())

    @property
    def failed(self) -> list[str]:
        """Services whose last state is not healthy."""
        return sorted(name for name, update in self.states.items()
                      if update.status != "healthy")

    def _render(self) -> RenderableType:
        table = Table(box=None, pad_edge=False, header_style="bold")
        for column in ("SERVICE", "STATE", "TIME", "MESSAGE"):
            table.add_column(column, overflow="fold")
        now = time.monotonic()
        for name in sorted(self.states):
            update = self.states[name]
            took = self.ended.get(name, now) - self.began[name]
            table.add_row(name, styled(update.status), f"{took:.1f}s", escape(update.message))
        assert self._progress is not None
        return Group(self._progress, table)


class _ProgressDisplay:
    """Rich progress bars on a terminal (None otherwise), shown while used as a context manager:
    a spinner, the task's description and a bar, then the display's own `columns`."""

    def __init__(self, out: Output, *columns: ProgressColumn | str) -> None:
        self.out = out
        self._progress: Progress | None = None
        if out.rich:
            self._progress = Progress(
                SpinnerColumn(finished_text=" "),
                TextColumn("[bold]{task.description}"),
                BarColumn(bar_width=30),
                *columns,
                console=out.console,
            )

    def __enter__(self) -> Self:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()


class PullDisplay(_ProgressDisplay):
    """Progress of PullImages: a bar per image on a terminal; status changes as lines when piped."""

    def __init__(self, out: Output) -> None:
        super().__init__(out, TaskProgressColumn(), DownloadColumn(),
                         TextColumn("{task.fields[status]}"))
        self.last: dict[str, ImagePullProgress] = {}
        self._tasks: dict[str, TaskID] = {}

    def update(self, item: ImagePullProgress) -> None:
        previous = self.last.get(item.image_name)
        self.last[item.image_name] = item
        if self.out.json_mode:
            self.out.json_line(item)
            return
        final = item.status in {"complete", "error"}
        if self._progress is not None:
            task = self._tasks.get(item.image_name)
            if task is None:
                task = self._progress.add_task(item.image_name, total=None, status="")
                self._tasks[item.image_name] = task
            status = item.status if item.status != "error" else f"error: {item.message}"
            total = item.total or None
            completed = item.current
            if final:
                total = total or 1
                completed = total
            self._progress.update(task, total=total, completed=completed,
                                  status=Text(status, style=STATE_STYLES.get(item.status, "")))
            return
        if previous is None or previous.status != item.status or final:
            detail = item.message if item.status == "error" else (
                f"{item.progress_percent}%" if item.total else "")
            self.out.line(f"{item.image_name}  {item.status}  {detail}".rstrip())

    @property
    def failed(self) -> list[str]:
        return sorted(name for name, item in self.last.items() if item.status != "complete")


class WorkflowDisplay(_ProgressDisplay):
    """A workflow run's progress: steps done out of total, the running step, the state."""

    def __init__(self, out: Output, run_id: str) -> None:
        super().__init__(out, MofNCompleteColumn(), TextColumn("{task.fields[state]}"),
                         TimeElapsedColumn())
        self.run_id = run_id
        self._task: TaskID | None = None
        self._last_line = ""
        if self._progress is not None:
            self._task = self._progress.add_task(f"run {run_id}", total=None, state="")

    def update(self, status: Any) -> None:
        if self.out.json_mode:
            self.out.json_line(status)
            return
        step = f" step={status.current_step}" if status.current_step else ""
        if self._progress is not None and self._task is not None:
            state = Text(status.status, style=STATE_STYLES.get(status.status, ""))
            if status.current_step:
                state.append(f" ({status.current_step})", style="dim")
            if status.error:
                state.append(f": {status.error}", style="red")
            self._progress.update(self._task, total=status.total_steps or None,
                                  completed=status.steps_completed, state=state)
            return
        line = (f"{status.run_id}  {status.status}  {status.steps_completed}/"
                f"{status.total_steps}{step}")
        if status.error:
            line += f"  error: {status.error}"
        if line != self._last_line:
            self.out.line(line)
            self._last_line = line
