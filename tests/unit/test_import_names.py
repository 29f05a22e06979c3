"""Our code imports itself as `agent_infra`, never by the checkout's folder names.

services/ installs as `agent_infra` and client/ as `agent_infra.client`. An absolute import of
`client` or `services` only works from a checkout (the repo root on sys.path) and by accident:
installed from the wheel, it fails, or picks up an agent project's own module of that name.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCANNED = ("services", "client", "tests", "bench", "scripts", "examples")
FOLDER_NAMES = frozenset({"client", "services"})
# Only files with an import line naming one of them are parsed (parsing them all takes seconds).
CANDIDATE = re.compile(r"^\s*(?:import|from)\s[^\n]*\b(?:client|services)\b", re.MULTILINE)


def folder_imports(path: Path, root: Path = REPO) -> list[str]:
    """`file:line: statement` for each absolute import of a top-level `client` or `services`."""
    text = path.read_text()
    if not CANDIDATE.search(text):
        return []
    tree = ast.parse(text, filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        else:
            continue
        if any(module.split(".")[0] in FOLDER_NAMES for module in modules):
            where = path.relative_to(root)
            found.append(f"{where}:{node.lineno}: {ast.get_source_segment(text, node)}")
    return found


def scanned_files() -> list[Path]:
    return sorted(path for folder in SCANNED for pattern in ("*.py", "*.pyi")
                  for path in (REPO / folder).rglob(pattern)
                  if "__pycache__" not in path.parts)


def test_no_absolute_import_of_client_or_services() -> None:
    files = scanned_files()
    assert any(path.parent.name == "client" for path in files), "nothing scanned in client/"
    found = [line for path in files for line in folder_imports(path)]
    assert found == [], ("import these as agent_infra.* (services/ is agent_infra, client/ is "
                         "agent_infra.client):\n" + "\n".join(found))


def test_the_scan_sees_each_form(tmp_path: Path) -> None:
    """The forms it must catch, and the ones it must leave alone."""
    sample = tmp_path / "sample.py"
    sample.write_text("import client\nimport services.runtime as rt\nfrom client.infra import x\n"
                      "def f():\n    from services import y\n"
                      "import agent_infra.client\nfrom agent_infra import services\n"
                      "from . import client\nfrom .client import z\nimport clients\n")
    assert folder_imports(sample, tmp_path) == [
        "sample.py:1: import client",
        "sample.py:2: import services.runtime as rt",
        "sample.py:3: from client.infra import x",
        "sample.py:5: from services import y",
    ]
