"""The statechart, loaded from `statecharts/agent.json` and turned into a `transitions` machine.

Rules of the chart (the file is the single source of truth; diagrams are drawn from it):
- The root is one compound state whose regions all run in parallel: `player` plus one region per link.
- Each region is a flat set of states with a transition table. A transition names its trigger, its
  source state(s), its target (`null` = internal: effects without a change of state), its guards
  (`conditions` must hold, `unless` must fail) and its effect callbacks (`after`).
- A trigger may appear in several regions; it then fires in each region whose current state has it.
- Guards only read; effect callbacks only append effects. Neither fires triggers (follow-up inputs
  go back through the event queue), so every event is one step of the machine.

Loading validates the file against schemas/statechart.schema.json and lints it: every state named
in a transition must exist in its region, and every guard and callback must exist on the model, so
a typo fails at start-up instead of at the first event that needs it.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amora import schemas
from amora.core.machine import ChartMachine

SEP = "_"  # transitions' default separator between nested state names


class ChartError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Transition:
    region: str
    trigger: str
    sources: tuple[str, ...]
    dest: str | None
    conditions: tuple[str, ...]
    unless: tuple[str, ...]
    after: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Chart:
    name: str
    regions: dict[str, tuple[str, ...]]  # region -> its states, initial first
    transitions: tuple[Transition, ...]
    source: dict[str, Any]

    def leaf(self, region: str, state: str) -> str:
        return SEP.join((self.name, region, state))

    def triggers(self) -> set[str]:
        return {t.trigger for t in self.transitions}

    def callbacks(self) -> set[str]:
        return {name for t in self.transitions for name in (*t.conditions, *t.unless, *t.after)}


def _names(value: str | list[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def default_path() -> Path:
    return schemas.statechart_dir() / "agent.json"


def parse_chart(doc: dict[str, Any]) -> Chart:
    problems = [str(issue) for issue in schemas.issues("statechart", doc)]
    if problems:
        raise ChartError("statechart does not match its schema: " + "; ".join(problems))
    regions: dict[str, tuple[str, ...]] = {}
    transitions: list[Transition] = []
    for region, body in doc["regions"].items():
        states = list(body["states"])
        if body["initial"] not in states:
            problems.append(f"{region}: initial state {body['initial']!r} is not one of its states")
        else:
            states.remove(body["initial"])
            states.insert(0, body["initial"])
        regions[region] = tuple(states)
        for i, raw in enumerate(body["transitions"]):
            t = Transition(
                region=region,
                trigger=raw["trigger"],
                sources=_names(raw["source"]),
                dest=raw["dest"],
                conditions=_names(raw.get("conditions")),
                unless=_names(raw.get("unless")),
                after=_names(raw.get("after")),
            )
            for state in (*t.sources, *([t.dest] if t.dest else [])):
                if state not in body["states"]:
                    problems.append(f"{region}.transitions[{i}] ({t.trigger}): unknown state {state!r}")
            transitions.append(t)
    if problems:
        raise ChartError("statechart is inconsistent: " + "; ".join(problems))
    return Chart(doc["name"], regions, tuple(transitions), doc)


@functools.cache
def load_chart(path: Path | None = None) -> Chart:
    return parse_chart(json.loads((path or default_path()).read_text()))


def lint_model(chart: Chart, model: object) -> None:
    missing = sorted(name for name in chart.callbacks() if not callable(getattr(model, name, None)))
    if missing:
        raise ChartError(f"statechart names callbacks the model lacks: {', '.join(missing)}")
    clashes = sorted(name for name in chart.triggers() if hasattr(type(model), name))
    if clashes:
        # transitions silently skips binding a trigger that shadows a model attribute
        raise ChartError(f"model attributes shadow triggers: {', '.join(clashes)}")


def machine_config(chart: Chart) -> dict[str, Any]:
    """The chart in the form `transitions` takes (used at runtime and by the diagram tool)."""
    states = [
        {
            "name": chart.name,
            "parallel": [
                {"name": region, "initial": names[0], "children": list(names)}
                for region, names in chart.regions.items()
            ],
        }
    ]
    transitions = []
    for t in chart.transitions:
        entry: dict[str, Any] = {
            "trigger": t.trigger,
            "source": [chart.leaf(t.region, s) for s in t.sources],
            "dest": chart.leaf(t.region, t.dest) if t.dest else None,
        }
        if t.conditions:
            entry["conditions"] = list(t.conditions)
        if t.unless:
            entry["unless"] = list(t.unless)
        if t.after:
            entry["after"] = list(t.after)
        transitions.append(entry)
    return {"states": states, "transitions": transitions, "initial": chart.name}


def build_machine(chart: Chart, model: object) -> ChartMachine:
    lint_model(chart, model)
    return ChartMachine(
        model=model,
        auto_transitions=False,
        send_event=True,
        ignore_invalid_triggers=False,
        **machine_config(chart),
    )
