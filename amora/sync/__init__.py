"""Content sync from an Azure Blob Storage container into MPD's music and playlist folders.

    outcome = await run_sync(SyncSource(container_url=sas_url), SyncTargets(...), progress=cb)

Nothing here imports the Azure SDK at module level (it costs ~40 MB of RSS); it is imported only
when a connection string with an account key must be turned into a SAS.
"""

from typing import TYPE_CHECKING, Any

from amora.sync.api import run_sync
from amora.sync.manifest import read_last_success
from amora.sync.model import (
    SyncBusyError,
    SyncOutcome,
    SyncProgress,
    SyncSource,
    SyncTargets,
    SyncTuning,
)
from amora.sync.names import UnsafeName, local_relpath

if TYPE_CHECKING:
    from amora.sync.config import SyncSettings, from_config


def __getattr__(name: str) -> Any:
    # config pulls in jsonschema (~130 ms of start-up): only load it when asked for
    if name in ("from_config", "SyncSettings"):
        from amora.sync import config

        return getattr(config, name)
    raise AttributeError(name)


__all__ = [
    "SyncBusyError",
    "SyncOutcome",
    "SyncProgress",
    "SyncSettings",
    "SyncSource",
    "SyncTargets",
    "SyncTuning",
    "UnsafeName",
    "from_config",
    "local_relpath",
    "read_last_success",
    "run_sync",
]
