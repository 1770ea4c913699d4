"""docs/design.md draws the job lifecycle as promptq.jobs.lifecycle lists it: an arrow per
(source, target) of every transition, labelled with its name and code, and a table row."""

from __future__ import annotations

import re
from pathlib import Path

import promptq
from promptq.jobs import TRANSITIONS, Transition, lifecycle

DOC = Path(promptq.__file__).parent.parent / "docs" / "design.md"


def _section(title: str) -> str:
    return DOC.read_text(encoding="utf-8").split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def _label(transition: Transition) -> str:
    code = f" ({transition.code.value})" if transition.code else ""
    return f"{transition.name}{code}"


def expected_arrows() -> set[str]:
    return {
        f"{getattr(source, 'value', source)} --> {t.target.value} : {_label(t)}"
        for t in TRANSITIONS
        for source in (t.sources or ("[*]",))
    }


def test_the_diagram_has_an_arrow_for_every_transition_and_no_other() -> None:
    diagram = _section("Job lifecycle").split("```mermaid", 1)[1].split("```", 1)[0]
    arrows = {line.strip() for line in diagram.splitlines() if "-->" in line}
    assert arrows == expected_arrows()


def test_the_table_has_a_row_for_every_transition_with_its_states_event_and_code() -> None:
    rows = {}
    for line in _section("Job lifecycle").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and (name := re.fullmatch(r"`(\w+)`", cells[0])):
            rows[name.group(1)] = cells[1:5]
    assert rows == {
        t.name: [
            ", ".join(s.value for s in t.sources) or "(new row)",
            t.target.value,
            f"`{t.event}`" if t.event else "",
            f"`{t.code.value}`" if t.code else "",
        ]
        for t in TRANSITIONS
    }


def test_every_transition_has_its_statement_in_the_transitions_module() -> None:
    source = (Path(promptq.__file__).parent / "jobs" / "transitions.py").read_text()
    constants = {name for name, value in vars(lifecycle).items() if isinstance(value, Transition)}
    assert {value.name for name, value in vars(lifecycle).items() if name in constants} == {
        t.name for t in TRANSITIONS
    }
    unused = sorted(name for name in constants if not re.search(rf"\b{name}\b", source))
    assert unused == []
