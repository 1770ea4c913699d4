"""docs/errors.md and the code list the same error codes: the API's (read from where
promptq raises them) and the jobs' (the JobErrorCode enum, and every code a worker, the
upload parser or a transition writes is a member of it)."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import promptq
from promptq.api.errors import HTTP_CODES, OTHER_HTTP_CODE
from promptq.jobs import JobErrorCode

ROOT = Path(promptq.__file__).parent
DOC = ROOT.parent / "docs" / "errors.md"

API_ERRORS = {"ApiError", "InvalidRequest", "ServiceUnavailable"}
ATTEMPT_ERRORS = {"AttemptError", "RetryableError", "TerminalError", "_bad_request"}
#: Where job error codes are written (the relay's backoff borrows RetryableError for
#: webhook deliveries, which are not jobs).
JOB_CODE_SOURCES = ("errors.py", "files.py", "batch_input.py", "batches.py", "jobs", "workers")


def doc_codes(section: str) -> set[str]:
    """The backticked codes in the first two columns of the table under `section`."""
    text = DOC.read_text(encoding="utf-8")
    body = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    codes = set()
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        for cell in cells[:2]:
            match = re.fullmatch(r"`([a-z_]+)`", cell)
            if match:
                codes.add(match.group(1))
    return codes


def _name(func: ast.expr) -> str:
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else ""


def _literal(node: ast.expr | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _subclasses(trees: list[ast.Module], roots: set[str]) -> set[str]:
    found = set(roots)
    classes = [n for tree in trees for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]
    while new := {
        c.name
        for c in classes
        if c.name not in found and any(_name(base) in found for base in c.bases)
    }:
        found |= new
    return found


def _codes_given(tree: ast.Module, roots: set[str], classes: set[str]) -> Iterator[str]:
    # The first argument of a call to a root class (its code), and of super().__init__ in
    # a class derived from one (a subclass with a fixed code).
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name in classes:
            inits = [n for n in ast.walk(node) if isinstance(n, ast.Call)]
            yield from _first_literals(n for n in inits if _name(n.func) == "__init__")
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    yield from _first_literals(n for n in calls if _name(n.func) in roots)


def _first_literals(calls: Iterator[ast.Call]) -> Iterator[str]:
    for call in calls:
        code = _literal(call.args[0]) if call.args else None
        if code is not None:
            yield code


def _trees(paths: list[Path]) -> list[ast.Module]:
    return [ast.parse(p.read_text(encoding="utf-8")) for p in paths]


def api_codes_in_code() -> set[str]:
    trees = _trees(sorted(ROOT.rglob("*.py")))
    classes = _subclasses(trees, API_ERRORS)
    codes = {code for tree in trees for code in _codes_given(tree, API_ERRORS, classes)}
    return codes | set(HTTP_CODES.values()) | {OTHER_HTTP_CODE}


def job_codes_in_code() -> set[str]:
    paths = [
        p for p in sorted(ROOT.rglob("*.py")) if p.relative_to(ROOT).parts[0] in JOB_CODE_SOURCES
    ]
    trees = _trees(paths)
    classes = _subclasses(trees, ATTEMPT_ERRORS)
    codes = {code for tree in trees for code in _codes_given(tree, ATTEMPT_ERRORS, classes)}
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _name(node.func) == "_fail" and len(node.args) > 1:
                codes.add(_literal(node.args[1]) or "")
            if isinstance(node, ast.keyword) and node.arg == "error_code":
                codes.add(_literal(node.value) or "")
    codes.discard("")
    return codes


def test_the_api_error_codes_are_the_documented_ones() -> None:
    found = api_codes_in_code()
    assert "batch_not_cancellable" in found and "unauthorized" in found  # the scan works
    assert found == doc_codes("API error codes")


def test_the_job_error_codes_are_the_documented_ones() -> None:
    assert {c.value for c in JobErrorCode} == doc_codes("Job error codes")


def test_every_job_error_code_written_is_a_member_of_the_enum() -> None:
    found = job_codes_in_code()
    assert {"invalid_json", "provider_error", "context_length_exceeded"} <= found
    assert found - {c.value for c in JobErrorCode} == set()
