"""A `transitions` HierarchicalMachine that does not recompute what cannot have changed.

Every trigger still runs through `transitions`: its event lookup, conditions, callbacks, state
exits and entries, model update and the MachineError for a trigger the current state lacks. What
changes is only how often derived data is recomputed. The states and transitions do not change
once the machine is built, so everything below is a function of (what is looked up, the scope it
is looked up in, the model's current configuration):

- `get_state` walks the nested tree through the machine's scope stack on every call (a transition
  looks states up a dozen times): successful look-ups are remembered per (scope, name); failed
  ones are not, so errors stay as `transitions` raises them;
- an event's visiting order of the active states (`trigger_nested`: state tree, scope, breadth-first
  order) is remembered per (configuration, scope);
- a transition's plan (`_resolve_transition`: which states it exits and enters with which scopes,
  and the configuration it leaves) is remembered per (transition, configuration, scope), and only
  for plain targets (a target with initial children also moves `event_data.scope`, so it always
  takes the library's path);
- after a state change `transitions` walks the configuration for final states to run `on_final`
  callbacks: a machine without a single final state can never run one, so the walk is skipped.

Anything out of the ordinary (Enum states, final states, a `transitions` other than the 0.9 line the
shortcuts mirror) takes the library's own code. Adding states forgets everything remembered. The
golden traces (tests/golden) pin the behaviour; this module may only make it cheaper.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from typing import Any

import transitions
from transitions.extensions import HierarchicalMachine
from transitions.extensions.nesting import NestedEvent, NestedState, NestedTransition, resolve_order

# the shortcuts below mirror transitions 0.9's nesting.py; any other version runs the library's code
_MIRRORS_LIBRARY = transitions.__version__.startswith("0.9.")


def _config_key(value: Any) -> Any:
    """The model's configuration as a dict key, or None if it is not plain state names."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        key = tuple(value)
        for v in key:
            if not isinstance(v, str):
                parts = tuple(_config_key(v) for v in value)
                return None if None in parts else parts
        return key
    return None


class _Event(NestedEvent):
    def trigger_nested(self, event_data: Any) -> Any:
        machine = event_data.machine
        if not _MIRRORS_LIBRARY:
            return super().trigger_nested(event_data)
        config = getattr(event_data.model, machine.model_attribute)
        config_key = _config_key(config)
        if config_key is None:
            return super().trigger_nested(event_data)
        key = (config_key, tuple(machine.prefix_path))
        ordered = machine.visit_orders.get(key)
        if ordered is None:
            tree = machine.build_state_tree(config, machine.state_cls.separator)
            tree = functools.reduce(dict.get, machine.get_global_name(join=False), tree)
            ordered = tuple(tuple(path) for path in resolve_order(tree))
            machine.visit_orders[key] = ordered
        # from here on as NestedEvent.trigger_nested
        separator = machine.state_cls.separator
        done = set()
        event_data.event = self
        for path in ordered:
            state_name = separator.join(path)
            if state_name not in done and state_name in self.transitions:
                event_data.state = machine.get_state(state_name)
                event_data.source_name = state_name
                event_data.source_path = list(path)
                self._process(event_data)
                if event_data.result:
                    elems = list(path)
                    while elems:
                        done.add(separator.join(elems))
                        elems.pop()
        return event_data.result


class _Plan:
    """What `_resolve_transition` decided, without the event it was decided for."""

    __slots__ = ("enters", "exits", "model_states", "states")

    def __init__(
        self,
        exits: list[tuple[Any, list[str]]],
        enters: list[tuple[Any, list[str]]],
        model_states: Any,
        states: Any,
    ):
        self.exits = exits
        self.enters = enters
        self.model_states = model_states  # the model's attribute after the transition (names)
        self.states = states  # event_data.state after the transition (state objects)

    @classmethod
    def of(cls, event_data: Any, exit_partials: list[Any], enter_partials: list[Any]) -> _Plan | None:
        exits = _steps(event_data, exit_partials, NestedState.scoped_exit)
        enters = _steps(event_data, enter_partials, NestedState.scoped_enter)
        if exits is None or enters is None:
            return None
        model_states = getattr(event_data.model, event_data.machine.model_attribute)
        return cls(exits, enters, _copy_config(model_states), _copy_config(event_data.state))


def _steps(event_data: Any, partials: list[Any], method: Any) -> list[tuple[Any, list[str]]] | None:
    steps = []
    for p in partials:
        if not isinstance(p, functools.partial):
            return None
        state = getattr(p.func, "__self__", None)
        if (
            p.keywords
            or len(p.args) != 2
            or p.args[0] is not event_data
            or not isinstance(state, NestedState)
            or getattr(p.func, "__func__", None) is not method
        ):
            return None
        steps.append((state, list(p.args[1] or [])))
    return steps


class _Transition(NestedTransition):
    def _change_state(self, event_data: Any) -> None:
        machine = event_data.machine
        if not _MIRRORS_LIBRARY or machine.has_final_states:
            super()._change_state(event_data)
            return
        config_key = _config_key(getattr(event_data.model, machine.model_attribute))
        key = (self, config_key, tuple(machine.prefix_path))
        plan = machine.plans.get(key) if config_key is not None else None
        if plan is None:
            # as NestedTransition._change_state, minus the final-state walk (there are none)
            state_tree, exit_partials, enter_partials = self._resolve_transition(event_data)
            for func in exit_partials:
                func()
            self._update_model(event_data, state_tree)
            for func in enter_partials:
                func()
            if config_key is not None and not getattr(machine.get_state(self.dest), "initial", None):
                plan = _Plan.of(event_data, exit_partials, enter_partials)
                if plan is not None:
                    machine.plans[key] = plan
            return
        for state, scope in plan.exits:
            state.scoped_exit(event_data, list(scope))
        # as NestedTransition._update_model: plain names (the configuration key says so) are set
        # as they are, so set_state's look-ups would only find the states the plan already holds
        setattr(event_data.model, machine.model_attribute, _copy_config(plan.model_states))
        event_data.state = _copy_config(plan.states)
        for state, scope in plan.enters:
            state.scoped_enter(event_data, list(scope))

    def _final_check(self, event_data: Any, state_tree: Any, enter_partials: Any) -> tuple[list[Any], bool]:
        if not event_data.machine.has_final_states:
            return [], False
        result: tuple[list[Any], bool] = super()._final_check(  # type: ignore[misc]
            event_data, state_tree, enter_partials
        )
        return result


def _copy_config(value: Any) -> Any:
    return [_copy_config(v) for v in value] if isinstance(value, list) else value


def _listify(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


class ChartMachine(HierarchicalMachine):
    transition_cls = _Transition
    event_cls = _Event

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._state_cache: dict[tuple[tuple[str, ...], Any], Any] = {}
        self.visit_orders: dict[Any, tuple[tuple[str, ...], ...]] = {}
        self.plans: dict[Any, _Plan] = {}
        self._knows_cache: dict[tuple[int, str], bool] = {}
        self.trees: dict[Any, Any] = {}
        self._has_final: bool | None = None
        super().__init__(*args, **kwargs)

    def add_states(self, *args: Any, **kwargs: Any) -> None:
        self._forget()
        super().add_states(*args, **kwargs)
        self._forget()

    def add_transition(self, *args: Any, **kwargs: Any) -> None:
        self._forget()
        super().add_transition(*args, **kwargs)

    def _forget(self) -> None:
        self._state_cache = {}
        self.visit_orders = {}
        self.plans = {}
        self._knows_cache = {}
        self.trees = {}
        self._has_final = None

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

    def _trigger_event_nested(self, event_data: Any, trigger: str, _state_tree: Any) -> Any:
        if not _MIRRORS_LIBRARY:
            return super()._trigger_event_nested(event_data, trigger, _state_tree)  # type: ignore[misc]
        # as HierarchicalMachine._trigger_event_nested, except that it does not descend into a
        # subtree none of whose states knows the trigger (that visit finds nothing and does nothing)
        if _state_tree is None:
            config = getattr(event_data.model, self.model_attribute)
            config_key = _config_key(config)
            _state_tree = self.trees.get(config_key) if config_key is not None else None
            if _state_tree is None:
                _state_tree = self.build_state_tree(_listify(config), self.state_cls.separator)
                if config_key is not None:
                    self.trees[config_key] = _state_tree  # only read below, never changed
        res = {}
        for key, value in _state_tree.items():
            if value and self._knows(self.states[key], trigger):
                with self(key):
                    tmp = self._trigger_event_nested(event_data, trigger, value)
                    if tmp is not None:
                        res[key] = tmp
            if res.get(key, False) is False and trigger in self.events:
                event_data.event = self.events[trigger]
                tmp = event_data.event.trigger_nested(event_data)
                if tmp is not None:
                    res[key] = tmp
        return None if not res or all(v is None for v in res.values()) else any(res.values())

    def _knows(self, state: Any, trigger: str) -> bool:
        """Whether `state` or any state below it has an event named `trigger`."""
        key = (id(state), trigger)
        known = self._knows_cache.get(key)
        if known is None:
            known = trigger in state.events or any(self._knows(s, trigger) for s in state.states.values())
            self._knows_cache[key] = known
        return known

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
