"""What a federation over local site stores takes from the stores themselves.

`fedmol simulate` and `fedmol consortium run` know the stores they federate, so the model's
input size follows from how the stores were prepared (``fedmol prepare --n-bits``) instead of
having to be repeated as ``--set n-bits=...``: an explicit ``--set n-bits`` still wins, and the
sites still refuse a model whose input does not fit their store.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from fedmol.datasets.store import store_n_features
from fedmol.errors import InputError


def n_bits_of(stores: Iterable[Path]) -> int:
    """The feature count shared by every store in ``stores``; an error naming each store's count when they differ."""
    sizes = {Path(p): store_n_features(p) for p in stores}
    if not sizes:
        raise InputError("no site store given")
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{p.name}: {n}" for p, n in sizes.items())
        raise InputError(f"the site stores were prepared with different fingerprint sizes ({listed}): prepare "
                         "them all with the same `fedmol prepare --n-bits`")
    return next(iter(sizes.values()))


def with_store_n_bits(run_config: list[str], stores: Iterable[Path]) -> list[str]:
    """``run_config`` (``--set KEY=VALUE`` items) with ``n-bits`` from the stores unless it sets it."""
    if any(item.partition("=")[0].strip() == "n-bits" for item in run_config):
        return list(run_config)
    return [f"n-bits={n_bits_of(stores)}", *run_config]
