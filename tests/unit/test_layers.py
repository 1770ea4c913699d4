"""The package's shape, read from its source: layers point one way (models -> domain ->
delivery and HTTP), there is no import cycle, and only promptq.jobs.transitions writes a
job's status. Each check is also run on a small made-up graph, to show it can fail."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import promptq

ROOT = Path(promptq.__file__).parent
TRANSITIONS = "promptq.jobs.transitions"

#: Layers above the domain; everything else in promptq is models or domain.
HTTP = ("promptq.api",)
DELIVERY = ("promptq.scheduler", "promptq.workers")
ENTRY = (
    "promptq.__main__",
    "promptq.cli",
    "promptq.cli_ops",
    "promptq.client",
    "promptq.demo",
    "promptq.submit",
    "promptq.sim_provider",
    # The CLI's errors, progress bar and summaries.
    "promptq.cli_errors",
    "promptq.progress",
    "promptq.summary",
)
#: Libraries of the layers above: a domain module must not need them.
WEB_AND_QUEUE_LIBRARIES = ("fastapi", "starlette", "celery", "kombu", "uvicorn")


def _under(module: str, prefixes: Iterable[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def layer(module: str) -> str:
    """Which layer a promptq module belongs to."""
    if _under(module, ENTRY):
        return "entry"
    if _under(module, HTTP):
        return "http"
    if _under(module, DELIVERY):
        return "delivery"
    return "domain"


#: What each layer may import (besides itself and the domain).
ALLOWED = {
    "domain": {"domain"},
    "delivery": {"domain", "delivery"},
    "http": {"domain", "delivery", "http"},  # the API publishes through the dispatcher
    "entry": {"domain", "delivery", "http", "entry"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk_runtime(node: ast.AST) -> Iterator[ast.AST]:
    # Every node, imports inside functions too, but not `if TYPE_CHECKING:` blocks.
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child):
            yield from (n for stmt in child.orelse for n in [stmt, *_walk_runtime(stmt)])
            continue
        yield child
        yield from _walk_runtime(child)


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Names a module imports at run time: promptq modules, and top-level libraries."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module_name(path).rsplit(".", 0 if path.name == "__init__.py" else 1)[0]
    found: set[str] = set()
    for node in _walk_runtime(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    return {n if n.startswith("promptq") else n.split(".")[0] for n in found}


def import_graph() -> dict[str, set[str]]:
    """promptq module -> what it imports (promptq modules and libraries)."""
    paths = sorted(ROOT.rglob("*.py"))
    known = {module_name(p) for p in paths}
    return {module_name(p): imports_of(p, known) for p in paths}


def layer_violations(graph: Mapping[str, set[str]]) -> list[str]:
    """Imports that point the wrong way, as 'a -> b' lines."""
    bad = []
    for module, targets in graph.items():
        for target in sorted(targets):
            if target.startswith("promptq"):
                if target in graph and layer(target) not in ALLOWED[layer(module)]:
                    bad.append(f"{module} ({layer(module)}) -> {target} ({layer(target)})")
            elif layer(module) == "domain" and target in WEB_AND_QUEUE_LIBRARIES:
                bad.append(f"{module} (domain) -> {target}")
    return bad


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The import cycles among promptq modules (strongly connected components, Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in graph:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _parents_removed(graph: Mapping[str, set[str]]) -> dict[str, set[str]]:
    # A package's __init__ re-exporting its own modules is not a cycle of concern: Python
    # imports the package first. Edges from a module to its own package are dropped.
    return {
        m: {t for t in ts if not (m.startswith(t + ".") and t != "promptq")}
        for m, ts in graph.items()
    }


def test_layers_point_one_way() -> None:
    assert layer_violations(import_graph()) == []


def test_there_is_no_import_cycle() -> None:
    assert cycles(_parents_removed(import_graph())) == []


def test_the_checks_fail_on_a_cycle_and_on_a_domain_module_importing_the_api() -> None:
    # Given a made-up package where the domain imports the API and two modules loop
    graph = {
        "promptq.batches": {"promptq.api.schemas", "fastapi"},
        "promptq.api.schemas": {"promptq.batches"},
        "promptq.jobs": {"promptq.webhooks"},
        "promptq.webhooks": {"promptq.jobs"},
    }
    # Then both checks report it
    assert layer_violations(graph) == [
        "promptq.batches (domain) -> fastapi",
        "promptq.batches (domain) -> promptq.api.schemas (http)",
    ]
    assert cycles(graph) == [
        ["promptq.api.schemas", "promptq.batches"],
        ["promptq.jobs", "promptq.webhooks"],
    ]


# -- jobs.status has one writer -------------------------------------------------------------


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def status_writes(source: str) -> list[int]:
    """Lines of a module that write a job's status or a jobs row: an UPDATE or INSERT of
    Job, `status=JobStatus...` as a keyword, or `x.status = JobStatus...`."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("update", "insert") and any(
                _names(arg) & {"Job", "_JOBS"} for arg in node.args
            ):
                lines.append(node.lineno)
            for kw in node.keywords:
                if kw.arg == "status" and "JobStatus" in _names(kw.value):
                    lines.append(node.lineno)
        elif (
            isinstance(node, ast.Assign)
            and "JobStatus" in _names(node.value)
            and any(isinstance(t, ast.Attribute) and t.attr == "status" for t in node.targets)
        ):
            lines.append(node.lineno)
    return sorted(lines)


def test_only_the_transitions_module_writes_job_status() -> None:
    writers = {
        module_name(path): status_writes(path.read_text(encoding="utf-8"))
        for path in sorted(ROOT.rglob("*.py"))
    }
    assert {m: lines for m, lines in writers.items() if lines and m != TRANSITIONS} == {}
    assert writers[TRANSITIONS], "the scan found no write in the transitions module"


def test_the_status_scan_finds_each_kind_of_write() -> None:
    source = """
sa.update(Job).where(Job.id == x).values(status=JobStatus.CANCELLED)
job.status = JobStatus.FAILED
session.execute(sa.insert(Job).values(rows))
batch.status = BatchStatus.FAILED
"""
    assert status_writes(source) == [2, 2, 3, 4]
