"""ChartMachine only remembers what cannot change: over any sequence of triggers and guard
outcomes it must do exactly what the plain `transitions` HierarchicalMachine does."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from transitions import MachineError
from transitions.extensions import HierarchicalMachine

from amora.core.chart import load_chart, machine_config
from amora.core.machine import ChartMachine

CHART = load_chart()
TRIGGERS = sorted(CHART.triggers())
GUARDS = sorted({g for t in CHART.transitions for g in (*t.conditions, *t.unless)})
CALLBACKS = sorted({c for t in CHART.transitions for c in t.after})


class Recorder:
    """A model whose guards answer from `flags` and whose callbacks log what they saw."""

    def __init__(self) -> None:
        self.flags: dict[str, bool] = {}
        self.log: list[tuple[str, str, str]] = []
        for guard in GUARDS:
            setattr(self, guard, self._guard(guard))
        for callback in CALLBACKS:
            setattr(self, callback, self._callback(callback))

    def _guard(self, name: str) -> Any:
        return lambda event: self.flags.get(name, True)

    def _callback(self, name: str) -> Any:
        def record(event: Any) -> None:
            self.log.append((name, str(event.transition.source), str(event.transition.dest)))

        return record


def build(cls: type[HierarchicalMachine]) -> tuple[Recorder, HierarchicalMachine]:
    model = Recorder()
    machine = cls(model=model, auto_transitions=False, send_event=True, **machine_config(CHART))
    return model, machine


steps = st.lists(
    st.tuples(st.sampled_from(TRIGGERS), st.dictionaries(st.sampled_from(GUARDS), st.booleans(), max_size=4)),
    min_size=1,
    max_size=60,
)


@settings(max_examples=200)
@given(steps)
def test_chart_machine_does_what_transitions_does(sequence: list[tuple[str, dict[str, bool]]]) -> None:
    fast_model, _ = build(ChartMachine)
    plain_model, _ = build(HierarchicalMachine)
    for trigger, flags in sequence:
        outcomes = []
        for model in (fast_model, plain_model):
            model.flags = flags
            try:
                outcomes.append(("moved", model.trigger(trigger)))  # type: ignore[attr-defined]
            except MachineError as exc:
                outcomes.append(("error", str(exc)))
        assert outcomes[0] == outcomes[1], (trigger, flags)
        assert fast_model.state == plain_model.state  # type: ignore[attr-defined]
        assert fast_model.log == plain_model.log
