"""A `transitions` HierarchicalMachine that skips the work our statechart never needs.

Every trigger still runs through `transitions` (conditions, callbacks, state changes, errors for
triggers the current state lacks). What changes is only how often derived data is recomputed:

- `get_state` walks the nested state tree through the machine's scope stack on every call (a
  transition looks states up a dozen times). The states do not change once the machine is built,
  so a name resolves to the same state object for as long as the scope it was looked up in is the
  same; successful look-ups are remembered per (scope, name). Failed ones are not, so errors stay
  as `transitions` raises them. Adding states forgets everything.
- After each state change `transitions` walks the whole configuration looking for final states,
  to run `on_final` callbacks. A machine without a single final state can never call one, so that
  walk is skipped when there is none.
- `build_state_tree` recurses once per state name and path element; the configuration here is a
  list of plain leaf names, which a flat loop turns into the same tree.

The golden traces (tests/golden) pin the behaviour; this module may only make it cheaper.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from transitions.extensions import HierarchicalMachine
from transitions.extensions.nesting import NestedTransition


class _Transition(NestedTransition):
    def _final_check(self, event_data: Any, state_tree: Any, enter_partials: Any) -> tuple[list[Any], bool]:
        if not event_data.machine.has_final_states:
            return [], False
        result: tuple[list[Any], bool] = super()._final_check(  # type: ignore[misc]
            event_data, state_tree, enter_partials
        )
        return result


class ChartMachine(HierarchicalMachine):
    transition_cls = _Transition

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._state_cache: dict[tuple[tuple[str, ...], Any], Any] = {}
        self._has_final: bool | None = None
        super().__init__(*args, **kwargs)

    def add_states(self, *args: Any, **kwargs: Any) -> None:
        self._state_cache = {}
        self._has_final = None
        super().add_states(*args, **kwargs)
        self._state_cache = {}

    @property
    def has_final_states(self) -> bool:
        if self._has_final is None:
            # add_states may run inside a scope: the root's states are the bottom of the stack
            root = self._stack[0][1] if self._stack else self.states
            self._has_final = _any_final(root)
        return self._has_final

    def get_state(self, state: Any, hint: Any = None) -> Any:
        if hint:  # transitions' own recursion: the outer call is the one remembered
            return super().get_state(state, hint)
        if isinstance(state, str):
            name: Any = state
        elif isinstance(state, list):
            name = tuple(state)
        else:
            return super().get_state(state, hint)
        key = (tuple(self.prefix_path), name)
        found = self._state_cache.get(key)
        if found is None:
            found = super().get_state(state, hint)
            self._state_cache[key] = found
        return found

    def build_state_tree(self, model_states: Any, separator: str, tree: Any = None) -> Any:
        if tree is not None:
            return super().build_state_tree(model_states, separator, tree)
        if isinstance(model_states, str):
            names = [model_states]
        elif isinstance(model_states, list) and all(isinstance(s, str) for s in model_states):
            names = model_states
        else:
            return super().build_state_tree(model_states, separator, tree)
        tree = OrderedDict()
        for name in names:
            branch = tree
            for elem in name.split(separator):
                child = branch.get(elem)
                if child is None:
                    child = branch[elem] = OrderedDict()
                branch = child
        return tree


def _any_final(states: dict[str, Any]) -> bool:
    return any(getattr(s, "final", False) or _any_final(getattr(s, "states", {})) for s in states.values())
