"""fedmol.scoring.local_service: failures say why, and leave no process or scratch folder behind.

Its normal use (a served model answering on 127.0.0.1) runs in test_service.py and test_web.py,
through tests/scoring/live.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedmol.scoring.local_service import LocalService, local_service


def test_no_tokens_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one access token"):
        with local_service(tmp_path / "model", tmp_path / "key", tokens=()):
            pass


def test_headers_carry_the_token() -> None:
    svc = LocalService(url="http://127.0.0.1:1", token="t" * 20, pid=1, log_path=Path("x"))
    assert svc.headers == {"Authorization": f"Bearer {'t' * 20}"}


@pytest.mark.slow
def test_a_server_that_exits_raises_with_its_log(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    with pytest.raises(RuntimeError, match="fedmol serve exited with") as info:
        with local_service(tmp_path / "no-such-model", tmp_path / "no-such.key", log_path=log,
                           startup_timeout=120):
            pytest.fail("the block must not run without a server")
    assert log.read_text().strip(), "the server's output is kept in log_path"
    assert log.read_text().strip()[-200:] in str(info.value)
