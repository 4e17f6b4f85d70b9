"""The copy of the shared model a site holds between rounds, for int8 downloads.

With ``transport-dtype=int8`` a train message carries the change of the global model against the
copy the site received last round (`fedmol.transport.encode_download_delta`), named by that copy's
checksum (``wire.CFG_DOWNLOAD_BASE``), and the checksum of the copy it makes (``wire.CFG_DOWNLOAD_TAG``).
The site keeps that copy in memory (the site worker is one long-lived process) and in its store
(``<store>/federations/<id>/download_copy.npz``: a ClientApp process per message, or a restarted
worker, reads it from there; 52 MB at the default model size, rewritten each round). It is the
federation's shared model as the site received it, nothing of its own.

A site that does not hold the named copy (its store was restored, a round failed half-way) refuses the
round with a message that says so (`DownloadError`); the server then sends it the whole copy next round.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from fedmol import wire
from fedmol.models.site_model import federation_dir
from fedmol.transport import SCALE_SUFFIX, TransportError, apply_download, as_received, model_tag

COPY_FILE = "download_copy.npz"
TAG_KEY = "__tag__"  # the copy's checksum, stored beside its arrays (not a state-dict name)
log = logging.getLogger("fedmol.client")
_memory: dict[Path, tuple[str, dict[str, np.ndarray]]] = {}  # file -> (tag, arrays), this process


class DownloadError(RuntimeError):
    """A train message this site cannot turn into the shared model: its reply is an error that says why."""


def copy_path(store_path: Path, federation_id: str) -> Path:
    return federation_dir(Path(store_path), federation_id) / COPY_FILE


def _load(path: Path) -> tuple[str, dict[str, np.ndarray]] | None:
    if path in _memory:
        return _memory[path]
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        log.warning("the kept copy of the shared model %s cannot be read (%s)", path, exc)
        return None
    tag = str(arrays.pop(TAG_KEY, np.array("")))
    _memory[path] = (tag, arrays)
    return _memory[path]


def _keep(path: Path, tag: str, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **{**arrays, TAG_KEY: np.array(tag)})  # type: ignore[arg-type]
    os.replace(tmp, path)
    _memory.clear()  # one copy in memory per process: the latest
    _memory[path] = (tag, arrays)


def received_model(arrays: Mapping[str, np.ndarray], config: Mapping[str, object], *, store_path: Path,
                   federation_id: str) -> dict[str, np.ndarray]:
    """The shared model a train or evaluate message carries, as float32 arrays.

    Without ``wire.CFG_DOWNLOAD_TAG``: the arrays as they came (float16 upcast). With it: the copy the
    message makes, checked against that checksum and kept for the next round; with
    ``wire.CFG_DOWNLOAD_BASE`` too, made from the copy kept last round. `DownloadError` when that copy
    is not here or the result does not match."""
    tag = str(config.get(wire.CFG_DOWNLOAD_TAG, "") or "")
    base = str(config.get(wire.CFG_DOWNLOAD_BASE, "") or "")
    if not tag:
        if any(k.endswith(SCALE_SUFFIX) for k in arrays):
            raise DownloadError("the message carries int8 changes of the shared model without their checksum")
        return as_received(arrays)
    path = copy_path(store_path, federation_id)
    if base:
        held = _load(path)
        if held is None or held[0] != base:
            have = "none" if held is None else held[0]
            raise DownloadError(
                f"this round's model is a change against the copy {base} of the shared model, and this "
                f"site holds {have} ({path}): it refuses the round; the server sends the whole model next round")
        try:
            model = apply_download(arrays, held[1])
        except TransportError as exc:
            raise DownloadError(f"the change of the shared model cannot be applied: {exc}") from None
    else:
        model = as_received(arrays)
    got = model_tag(model)
    if got != tag:
        _memory.clear()
        raise DownloadError(f"the shared model as received has checksum {got}, the server's copy {tag}: "
                            "it refuses the round; the server sends the whole model next round")
    _keep(path, tag, model)
    return model
