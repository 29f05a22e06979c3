"""The original runner's `artifacts.outputs`: which declared output files are JSON to read back.

A payload with an `execution` section may carry
`"artifacts": {"outputs": [{"path": "out/metrics.json", "type": "json"}], "inputs": [...]}`
(over gRPC `payload["artifacts"]` is its JSON text). An output is read back when its `type` is
"json" or its path ends in ".json". The `path` of such an output must be relative, normalised
and free of `..` (it names a file under the class's results_dir); anything else is
InvalidArgument, both at SubmitTask (the orchestrator) and at ExecuteTask (env-manager). Other
outputs are never read, so their paths are not checked (a payload written for the original may
name any). `inputs` are not used.
Standard library only: the orchestrator imports this too.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

from .errors import InvalidArgument

MAX_OUTPUTS = 32
MAX_PATH_CHARS = 512


def json_outputs(text: str | None) -> tuple[tuple[str, str], ...]:
    """(file name, relative path) of each declared JSON output, from payload["artifacts"];
    () when there is none. InvalidArgument names the entry at fault."""
    if text is None or not text.strip():
        return ()
    try:
        section: Any = json.loads(text)
    except (ValueError, RecursionError):
        raise InvalidArgument("payload.artifacts is not valid JSON; expected an object such as "
                              "{\"outputs\": [{\"path\": \"out/metrics.json\", "
                              "\"type\": \"json\"}]}") from None
    if not isinstance(section, dict):
        raise InvalidArgument("payload.artifacts must be a JSON object such as {\"outputs\": "
                              "[{\"path\": \"out/metrics.json\", \"type\": \"json\"}]}")
    outputs = section.get("outputs")
    if outputs is None:
        return ()
    if not isinstance(outputs, list):
        raise InvalidArgument("artifacts.outputs must be a list of {\"path\", \"type\"}")
    if len(outputs) > MAX_OUTPUTS:
        raise InvalidArgument(f"artifacts.outputs lists {len(outputs)} files; at most "
                              f"{MAX_OUTPUTS}")
    found: dict[str, str] = {}
    for index, output in enumerate(outputs):
        what = f"artifacts.outputs[{index}]"
        if not isinstance(output, dict):
            raise InvalidArgument(f"{what} must be an object {{\"path\", \"type\"}}")
        path = output.get("path")
        if not isinstance(path, str) or not path:
            raise InvalidArgument(f"{what}.path must be a non-empty string")
        kind = output.get("type")
        if not (kind == "json" or path.endswith(".json")):
            continue  # never read: the original's callers may name any path for these
        check_relative(path, f"{what}.path")
        name = posixpath.basename(path)
        if name in found:
            raise InvalidArgument(f"{what}.path {path!r}: another JSON output is named {name!r} "
                                  f"({found[name]!r}); results are keyed by file name")
        found[name] = path
    return tuple(found.items())


def check_relative(path: str, what: str) -> None:
    """InvalidArgument unless `path` is a relative, normalised path with no `..` part."""
    if (len(path) > MAX_PATH_CHARS or path.startswith("/") or "\0" in path or "\\" in path
            or posixpath.normpath(path) != path or path in (".", "..")
            or ".." in path.split("/")):
        raise InvalidArgument(f"{what} must be a relative path under the results directory "
                              f"(no leading /, no `..`, normalised, at most {MAX_PATH_CHARS} "
                              f"characters); got {path!r:.200}")
