"""The tests' `fedmol serve` (fedmol.scoring.local_service) with two known tokens and a log beside the model."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fedmol.scoring.local_service import free_port, local_service

TOKEN = "test-token-0123456789abcdef"
OTHER_TOKEN = "other-token-0123456789abcdef"


@contextmanager
def running_service(model: Path, key: Path, *extra: str, startup_timeout: float = 180.0) -> Iterator[str]:
    """Start `fedmol serve` accepting TOKEN and OTHER_TOKEN; yield its base URL once /healthz answers."""
    port = free_port()
    with local_service(model, key, *extra, tokens=(TOKEN, OTHER_TOKEN), port=port, startup_timeout=startup_timeout,
                       log_path=Path(model).parent / f"serve-{port}.log") as svc:
        yield svc.url
