"""The statechart's model: the guards and effect callbacks that statecharts/agent.json names.

Guards only read the core; callbacks only ask it to append effects. The chart loader checks at
start-up that every name the chart uses exists here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from transitions.extensions.nesting import NestedEventData

from amora.core import effects as fx

if TYPE_CHECKING:
    from amora.core.agent import AgentCore


class ChartModel:
    """The statechart's model: its guards read the core, its callbacks append effects to it."""

    def __init__(self, core: AgentCore) -> None:
        self._core = core

    # guards
    def mpd_online(self, event: NestedEventData) -> bool:
        return self._core.link_state("mpd") == "online"

    def mpd_has_song(self, event: NestedEventData) -> bool:
        return self._core.picture.playback != "stopped"

    def mpd_says_playing(self, event: NestedEventData) -> bool:
        return self._core.picture.playback == "playing"

    def mpd_says_paused(self, event: NestedEventData) -> bool:
        return self._core.picture.playback == "paused"

    def mpd_says_stopped(self, event: NestedEventData) -> bool:
        return self._core.picture.playback == "stopped"

    def sync_configured(self, event: NestedEventData) -> bool:
        return self._core.sync_configured()

    def iothub_configured(self, event: NestedEventData) -> bool:
        return self._core.settings.iothub_configured

    def dev_mode(self, event: NestedEventData) -> bool:
        return self._core.settings.dev_mode

    def reboot_allowed(self, event: NestedEventData) -> bool:
        return self._core.reboot_allowed(event.kwargs["request"])

    # effect callbacks
    def send_to_mpd(self, event: NestedEventData) -> None:
        self._core.send_to_mpd(event.kwargs["request"])

    def refresh_state(self, event: NestedEventData) -> None:
        self._core.refresh_state(event.kwargs["request"])

    def answer_ping(self, event: NestedEventData) -> None:
        self._core.answer_ping(event.kwargs["request"])

    def start_sync(self, event: NestedEventData) -> None:
        self._core.start_sync(event.kwargs["request"])

    def finish_sync(self, event: NestedEventData) -> None:
        self._core.mark_dirty()

    def report_sync_busy(self, event: NestedEventData) -> None:
        self._core.report_sync_busy(event.kwargs["request"])

    def start_reboot(self, event: NestedEventData) -> None:
        self._core.start_reboot(event.kwargs["request"])

    def report_dev_reboot(self, event: NestedEventData) -> None:
        self._core.report_dev_reboot(event.kwargs["request"])

    # link callbacks learn their link from the region the transition belongs to, so one
    # trigger fired in several regions (shutdown) acts on each link
    def connect_link(self, event: NestedEventData) -> None:
        self._core.emit(fx.Connect(link=_region(event)))

    def link_online(self, event: NestedEventData) -> None:
        self._core.link_online(_region(event))

    def schedule_retry(self, event: NestedEventData) -> None:
        self._core.schedule_retry(_region(event))

    def close_link(self, event: NestedEventData) -> None:
        self._core.emit(fx.Disconnect(link=_region(event)))


def _region(event: NestedEventData) -> str:
    # leaf names are "<chart>_<region>_<state>"
    assert event.transition is not None
    return str(event.transition.source).split("_")[1]
