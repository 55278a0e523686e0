"""What the core is told at construction: the part of the configuration it acts on."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True, kw_only=True)
class BackoffPolicy:
    initial_delay: float = 1.0
    max_delay: float = 60.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def delay(self, attempt: int, rng: random.Random) -> float:
        base = min(self.max_delay, self.initial_delay * self.multiplier ** max(0, attempt - 1))
        spread = base * self.jitter
        return round(max(0.0, base + rng.uniform(-spread, spread)), 6)


@dataclass(frozen=True, slots=True, kw_only=True)
class CoreSettings:
    """The part of the configuration the core acts on (no secrets, no paths it would open)."""

    device_id: str
    version: str = "0.0.0"
    dev_mode: bool = False
    max_payload_bytes: int = 65536
    max_command_age: float | None = None
    dedupe_window: int = 1000
    backoff: dict[str, BackoffPolicy] = field(default_factory=dict)
    iothub_configured: bool = False
    sync_configured: bool = False
    reboot_command: tuple[str, ...] = ("systemctl", "reboot")
    reboot_guard_seconds: float = 600.0
    reboot_overdue_seconds: float = 120.0
    enable_device_twin: bool = True
    enable_direct_methods: bool = True
    telemetry_interval: float = 60.0
    min_report_interval: float = 1.0  # reported patches are coalesced to at most one per interval
    sync_enabled: bool = False  # periodic sync (desired content.sync_enabled overrides it)
    sync_interval: float = 3600.0  # seconds between periodic syncs; 0 = only at start and on request
    startup_volume: int | None = None
    audio_backend: str = "pipewire"
    audio_device: str = "default"
    outbox_limit: int = 1000
