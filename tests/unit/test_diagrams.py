"""The committed statechart diagrams are what the chart generates, and they show what review needs."""

from __future__ import annotations

import dataclasses
import html
import itertools
import re
from collections import Counter

from amora.core.chart import Chart, Transition, load_chart
from tools import statechart as diagrams

MMD = diagrams.CHART_DIR / "agent.mmd"
DOT = diagrams.CHART_DIR / "agent.dot"
SVG = diagrams.CHART_DIR / "agent.svg"


def test_committed_diagrams_match_the_chart() -> None:
    assert diagrams.check() == [], "diagrams are stale: run `python -m tools.statechart`"


def test_a_changed_chart_is_reported_as_drift() -> None:
    chart = load_chart()
    extra = Transition(
        region="player",
        trigger="eject",
        sources=("stopped",),
        dest="paused",
        conditions=("mpd_online",),
        unless=(),
        after=(),
    )
    changed = dataclasses.replace(chart, transitions=(*chart.transitions, extra))
    problems = diagrams.check(changed)
    assert any("agent.mmd" in p for p in problems)
    assert any("agent.dot" in p for p in problems)
    assert any("architecture.md" in p for p in problems)
    assert "player_stopped --> player_paused : eject [mpd_online]" in diagrams.mermaid(changed)


def _guard(t: Transition) -> str:
    parts = [*t.conditions, *(f"not {u}" for u in t.unless)]
    return f" [{' and '.join(parts)}]" if parts else ""


def _effect(t: Transition) -> str:
    return f" / {', '.join(t.after)}" if t.after else ""


def _mermaid_internal_entries(text: str) -> dict[str, list[tuple[set[str], str]]]:
    """state id -> [(triggers, " [guard] / effect")] read back from `id : ...` description lines."""
    entries: dict[str, list[tuple[set[str], str]]] = {}
    pending: dict[str, str] = {}
    for line in text.splitlines():
        match = re.fullmatch(r"\s*(\w+) : (.*)", line)
        if match is None:
            continue
        state, body = match.groups()
        body = pending.pop(state, "") + body
        if body.endswith(","):  # continued on the next description line of the same state
            pending[state] = body + " "
            continue
        head = re.match(r"([\w, ]+?)((?: \[[^\]]*\])?(?: / .*)?)$", body)
        assert head is not None, line
        triggers = {name.strip() for name in head.group(1).split(",")}
        entries.setdefault(state, []).append((triggers, head.group(2)))
    assert not pending
    return entries


def test_every_transition_shows_trigger_and_guard_in_mermaid() -> None:
    chart = load_chart()
    text = MMD.read_text()
    internal = _mermaid_internal_entries(text)
    for t in chart.transitions:
        for source in t.sources:
            src = f"{t.region}_{source}"
            if t.dest is not None:
                line = f"{src} --> {t.region}_{t.dest} : {t.trigger}{_guard(t)}{_effect(t)}"
                assert line in text, line
            else:
                wanted = _guard(t) + _effect(t)
                assert any(
                    t.trigger in triggers and suffix == wanted for triggers, suffix in internal.get(src, [])
                ), f"internal {t.trigger}{wanted} missing in {src}"


def test_every_transition_shows_trigger_and_guard_in_dot() -> None:
    chart = load_chart()
    text = DOT.read_text()
    for t in chart.transitions:
        for source in t.sources:
            src = f"{t.region}_{source}"
            if t.dest is not None:
                line = f'{src} -> {t.region}_{t.dest} [label="{t.trigger}{_guard(t)}{_effect(t)}"];'
                assert line in text, line
            else:
                node = re.search(rf'^\s*{src} \[label="(.*)"\];$', text, re.M)
                assert node is not None
                rows = node.group(1).replace("\\l", "\n")
                assert t.trigger in rows and f"{_guard(t)}{_effect(t)}\n" in rows, (src, t.trigger)


def test_regions_are_parallel_regions_of_the_root() -> None:
    chart: Chart = load_chart()
    text = MMD.read_text().splitlines()
    root = text.index(f"  state {chart.name} {{")
    blocks = [i for i, line in enumerate(text) if re.fullmatch(r"    state (\w+) \{", line)]
    separators = [i for i, line in enumerate(text) if line == "    --"]
    assert [text[i].split()[1] for i in blocks] == list(chart.regions)
    assert len(separators) == len(chart.regions) - 1
    # each separator sits between two region blocks, all inside the root block
    for sep, (before, after) in zip(separators, itertools.pairwise(blocks), strict=True):
        assert before < sep < after
    assert root < blocks[0]
    dot = DOT.read_text()
    assert f"subgraph cluster_{chart.name} {{" in dot
    for region in chart.regions:
        assert f"subgraph cluster_{region} {{" in dot


def test_committed_svg_is_drawn_from_the_committed_dot() -> None:
    # the SVG carries the Graphviz version and layout: compare what it draws, not its bytes
    dot = DOT.read_text()
    svg = SVG.read_text()
    nodes = set(re.findall(r"^\s*(\w+) \[", dot, re.M)) - {"graph", "node", "edge"}
    edges = re.findall(r"^\s*(\w+) -> (\w+)", dot, re.M)
    titles = Counter(html.unescape(t) for t in re.findall(r"<title>([^<]*)</title>", svg))
    assert {t for t in titles if "->" not in t and not t.startswith("cluster_")} - {"agent"} == nodes
    assert Counter(t for t in titles if "->" in t) == Counter(f"{a}->{b}" for a, b in edges)
    texts = {html.unescape(t) for t in re.findall(r"<text[^>]*>([^<]*)</text>", svg)}
    for label in re.findall(r'-> \w+ \[label="([^"]*)"\]', dot):
        assert label in texts, label
