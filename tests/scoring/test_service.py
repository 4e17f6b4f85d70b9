"""The scoring API on a real uvicorn server (`fedmol serve` on 127.0.0.1): auth, limits, inputs."""

from __future__ import annotations

import io
import socket
import time

import httpx
import numpy as np
import pandas as pd
import pytest

from fedmol.scoring.access import RateLimiter
from tests.scoring.conftest import SMILES
from tests.scoring.live import OTHER_TOKEN, TOKEN, running_service


def test_rate_limiter_refills_per_token():
    limiter = RateLimiter(capacity=10, window=10.0)
    assert limiter.take("a", 8, now=0.0) == 0
    assert limiter.take("a", 5, now=0.0) == pytest.approx(3.0)  # 2 left, 3 more refill in 3 s
    assert limiter.take("b", 10, now=0.0) == 0  # another token has its own bucket
    assert limiter.take("a", 5, now=3.0) == 0


@pytest.fixture(scope="module")
def service(site):
    with running_service(site["model"], site["key"], "--site-store", str(site["store"]), "--mc-samples", "5",
                         "--max-request-bytes", "2000000", "--body-timeout", "2") as url:
        yield url


def _auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


pytestmark = pytest.mark.slow


def test_health_docs_and_model(service):
    assert httpx.get(f"{service}/healthz").json()["status"] == "ok"
    assert "/v1/score" in httpx.get(f"{service}/openapi.json").json()["paths"]
    assert httpx.get(f"{service}/docs").status_code == 404  # Swagger UI would come from a CDN: not on this origin
    page = httpx.get(f"{service}/")
    assert "script-src 'self'" in page.headers["content-security-policy"] and page.headers["x-content-type-options"]
    assert httpx.get(f"{service}/v1/model").status_code == 401
    info = httpx.get(f"{service}/v1/model", headers=_auth()).json()
    assert info["name"] == "model" and info["site"] == "site-a"
    assert {t["name"]: t["scope"] for t in info["tasks"]} == {"logS": "consortium", "soluble": "private"}
    assert info["training"]["federation_id"] == "fed0test" and "key" not in str(info["training"]).lower().replace(
        "key_fingerprint", "")
    assert info["limits"]["max_molecules"] == 10_000


def test_scoring_needs_a_valid_token(service):
    r = httpx.post(f"{service}/v1/score", json=["CCO"])
    assert r.status_code == 401 and "Bearer" in r.json()["detail"]
    assert r.headers["www-authenticate"].startswith("Bearer")
    r = httpx.post(f"{service}/v1/score", json=["CCO"], headers=_auth("wrong-token-0123456789abcdef"))
    assert r.status_code == 401 and r.json()["detail"] == "invalid access token"


def test_score_json_with_bad_smiles(service):
    r = httpx.post(f"{service}/v1/score", json={"smiles": ["CCO", "nonsense(", ""], "ids": ["a", "b", "c"]},
                   headers=_auth(), timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["n_read"], body["n_scored"], body["n_rejected"]) == (3, 1, 2)
    good, bad, empty = body["results"]
    assert good["id"] == "a" and good["canonical_smiles"] == "CCO" and good["error"] == ""
    assert 0 <= good["soluble"] <= 1 and 0 <= good["soluble_p1"] <= 1 and good["logS_lower"] < good["logS_upper"]
    assert bad["error"].startswith("unparsable") and bad["soluble"] is None
    assert empty["error"] == "empty SMILES"
    assert "validation fold" in body["calibration"]


def test_empty_list(service):
    r = httpx.post(f"{service}/v1/score", json=[], headers=_auth())
    assert r.status_code == 200 and r.json()["n_read"] == 0 and r.json()["results"] == []


def test_malformed_bodies_are_422(service):
    r = httpx.post(f"{service}/v1/score", content=b"{not json", headers={**_auth(), "Content-Type": "application/json"})
    assert r.status_code == 422 and "not valid JSON" in r.json()["detail"]
    r = httpx.post(f"{service}/v1/score", json=[1, 2], headers=_auth())
    assert r.status_code == 422 and "list of SMILES" in r.json()["detail"]


def test_csv_body_upload_and_csv_answer(service):
    csv = "id,smiles\nm1,CCO\nm2,c1ccccc1O\n"
    r = httpx.post(f"{service}/v1/score", content=csv, headers={**_auth(), "Content-Type": "text/csv"})
    assert r.status_code == 200 and [x["id"] for x in r.json()["results"]] == ["m1", "m2"]
    r = httpx.post(f"{service}/v1/score?format=csv", files={"file": ("in.csv", csv, "text/csv")}, headers=_auth())
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    frame = pd.read_csv(io.StringIO(r.text))
    assert list(frame["id"]) == ["m1", "m2"] and frame["soluble"].between(0, 1).all()
    r = httpx.post(f"{service}/v1/score", content="name,value\nx,1\n", headers={**_auth(), "Content-Type": "text/csv"})
    assert r.status_code == 422 and "no 'smiles' column" in r.json()["detail"]


def test_depictions_are_svg(service):
    r = httpx.post(f"{service}/v1/score?depict=true", json=["c1ccccc1O", "xx("], headers=_auth())
    first, bad = r.json()["results"]
    assert first["svg"].startswith("<svg") and bad["svg"] == ""


def test_limits_molecules_and_bytes(service):
    r = httpx.post(f"{service}/v1/score", json=["C"] * 10_001, headers=_auth())
    assert r.status_code == 413 and "limit is 10,000 per request" in r.json()["detail"]
    r = httpx.post(f"{service}/v1/score", json=["C" * 100] * 25_000, headers=_auth())
    assert r.status_code == 413 and "request body too large" in r.json()["detail"]


def test_ten_thousand_molecules(service):
    rng = np.random.default_rng(0)
    smiles = [SMILES[i] for i in rng.integers(0, len(SMILES), 10_000)]
    r = httpx.post(f"{service}/v1/score", json=smiles, headers=_auth(OTHER_TOKEN), timeout=300)
    assert r.status_code == 200, r.text[:500]
    body = r.json()
    assert body["n_read"] == body["n_scored"] == 10_000
    from rdkit import Chem

    assert [x["canonical_smiles"] for x in body["results"]] == [Chem.CanonSmiles(s) for s in smiles]  # order kept
    assert all(x["soluble"] is not None for x in body["results"])


def test_rate_limit_per_token(site):
    with running_service(site["model"], site["key"], "--max-molecules", "10", "--rate-limit", "15",
                         "--rate-window", "3600", "--mc-samples", "0") as url:
        assert httpx.post(f"{url}/v1/score", json=["CCO"] * 10, headers=_auth()).status_code == 200
        r = httpx.post(f"{url}/v1/score", json=["CCO"] * 10, headers=_auth())
        assert r.status_code == 429 and "rate limit" in r.json()["detail"] and int(r.headers["retry-after"]) > 0
        assert httpx.post(f"{url}/v1/score", json=["CCO"] * 10, headers=_auth(OTHER_TOKEN)).status_code == 200
        r = httpx.post(f"{url}/v1/score", json=["CCO"] * 11, headers=_auth(OTHER_TOKEN))
        assert r.status_code == 413


def _raw_request(url: str, request: bytes, timeout: float = 15.0) -> tuple[bytes, float]:
    """Send raw bytes, read until the server closes; (status line, seconds until closed)."""
    host, port = url.removeprefix("http://").split(":")
    start = time.monotonic()
    data = b""
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        try:
            sock.sendall(request)
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:  # the server closed while we were still sending
            data = data or b"RESET"
    return data.split(b"\r\n", 1)[0], time.monotonic() - start


def test_stalled_body_and_oversized_headers(service):
    # A declared length that never arrives: 408 after --body-timeout (2 s), and the connection closes.
    status, seconds = _raw_request(service, b"POST /v1/score HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer "
                                   + TOKEN.encode() + b"\r\nContent-Type: application/json\r\n"
                                   b"Content-Length: 1000\r\n\r\n[")
    assert b" 408 " in status and seconds < 10
    # Headers beyond 16 kB: 431 from the app when they arrive at once, 400 from h11 while they are still
    # incomplete beyond its buffer limit (httptools buffered any size).
    status, _ = _raw_request(service, b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
    assert b" 431 " in status
    status, _ = _raw_request(service, b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 2_000_000 + b"\r\n\r\n")
    assert b" 400 " in status or status == b"RESET"  # refused before the 2 MB were read
