"""How a site's replies leave it, as its outbox ledger records them (issue #14's privacy report).

Each ledger entry (`fedmol.client.site.SiteNode.record_outbox`) carries `outbox_provenance`:
``secure_aggregation`` (the run's training updates went through Flower's SecAgg+), ``transport``
(the dtype the updates travel in, `fedmol.transport.effective_transport`), ``packed`` (the arrays
listed left as one uint8 array that holds them all, their bytes unchanged behind a JSON index of
names, dtypes and shapes: `fedmol.records.pack_arrays`; not with SecAgg+) and ``app``: the
installed fedmol and flwr versions, the sha256 of the run config the site received (`config_hash`,
the notation of the site's ``approved-apps.txt``) and the hash of the run's FAB where the site knows
it: the site runtime (`fedmol.client.worker`, ``fedmol site worker``) is handed the FAB and sets
`FAB_HASH` around each task; in simulation and in Flower's own ClientApp process the ClientApp sees
no FAB, and it is None.

Light to import (the ClientApp and the site runtime both use it): no torch, flwr only inside `config_hash`.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

from fedmol.config import FederationConfig
from fedmol.errors import ConfigError
from fedmol.transport import effective_transport

# The hash of the FAB of the run being served, where the site knows it (set by the site runtime).
FAB_HASH: ContextVar[str | None] = ContextVar("fedmol_fab_hash", default=None)


def _canonical(value: Any) -> Any:
    if isinstance(value, bool) or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)  # `lr = 1` and `lr = 1.0` are the same configuration
    raise ConfigError(f"a run config value must be a bool, number or string, got {value!r}")


def config_hash(config: Mapping[str, Any]) -> str:
    """sha256 of a run configuration (flat keys, their defaults), independent of order and TOML layout."""
    from flwr.common.config import flatten_dict

    flat = {k: _canonical(v) for k, v in flatten_dict(dict(config)).items()}
    text = json.dumps(flat, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def outbox_provenance(cfg: FederationConfig, run_config: Mapping[str, Any], *, secure_aggregation: bool,
                      fab_hash: str | None = None, packed: bool = False) -> dict[str, Any]:
    """The ledger's fields for a run's replies (see the module docstring). ``transport`` is what
    `fedmol.client.site.SiteNode.train_round` encodes the update in: ``effective_transport(cfg)``."""
    return {"secure_aggregation": bool(secure_aggregation), "transport": effective_transport(cfg),
            "packed": bool(packed),
            "app": {**_versions(), "run_config_sha256": config_hash(run_config), "fab_hash": fab_hash}}


@functools.cache
def _versions() -> dict[str, str]:
    from importlib import metadata

    return {name: metadata.version(name) for name in ("fedmol", "flwr")}
