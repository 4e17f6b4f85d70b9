"""Fuzzing the scoring service and `fedmol score`'s reader path (#13, fuzzing).

* The HTTP API, from its own OpenAPI schema (schemathesis), against a real `fedmol serve` (uvicorn,
  worker processes) on 127.0.0.1: valid and invalid requests of every operation, with a token. No
  answer is a 5xx, the process stays alive, and every scoring answer has ``scored + rejected = read``.
* Deep JSON, huge integers and any JSON that is no list of SMILES: a 422 that says what to send.
* In process (hypothesis): request bodies (`fedmol.scoring.bodies`) of random bytes and CSV with wrong
  field counts, bad bytes, quoted line breaks, and `fedmol score` on random files: every row is scored
  or rejected with a reason naming its line, ``scored + rejected = read``.

Bounded and deterministic: few examples per test (``FEDMOL_FUZZ_SCALE`` multiplies them) under the
derandomised "fedmol" profile of tests/conftest.py.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedmol.scoring.local_service import LocalService, local_service

SCALE = int(os.environ.get("FEDMOL_FUZZ_SCALE", "1"))
TOKEN = "fuzz-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_MOLECULES = 50
LINE_IN_REASON = re.compile(r"\bline (\d+)\b")


def fuzz(examples: int, deadline: int | None = 5000) -> settings:
    return settings(max_examples=examples * SCALE, deadline=deadline,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def scorer(site: dict[str, Path]) -> Any:
    from fedmol.datasets.keys import load_key
    from fedmol.scoring.scorer import Scorer

    return Scorer(site["model"], load_key(site["key"]), mc_samples=0)


# -- request bodies and scoring answers, in process ---------------------------------------------------
CSV_TOKENS = ["C", "O", "N", "c1ccccc1", "[nH]", "(", ")", "=", "%10", ".", "*", "[300U]", " ", ",", '"', "\n", "\r\n",
              "\r", "é", "\x00", "\ud800", "smiles", "id", "x"]
csv_text = st.lists(st.sampled_from(CSV_TOKENS), max_size=40).map("".join)


@st.composite
def csv_bodies(draw: st.DrawFn) -> bytes:
    """A header (smiles and id, or smiles alone) and rows of 0-3 fields, some with bytes that are no UTF-8."""
    header = draw(st.sampled_from(["smiles,id", "id,smiles", "SMILES", "smiles,id,note"]))
    rows = draw(st.lists(st.lists(csv_text, max_size=3), max_size=10))
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, lineterminator=draw(st.sampled_from(["\n", "\r\n"])))
    for row in rows:
        writer.writerow(row)
    body = (header + "\n" + buf.getvalue()).encode("utf-8", "surrogatepass")
    prefix = draw(st.sampled_from([b"", b"\xef\xbb\xbf"]))
    return prefix + (body.replace("é".encode(), b"\xe9") if draw(st.booleans()) else body)


def _check_answer(body: bytes, n: int) -> dict[str, Any]:
    """The JSON scoring answer to ``n`` molecules: scored + rejected = read = n, a reason per reject."""
    answer = json.loads(body)
    assert answer["n_read"] == n == len(answer["results"])
    assert answer["n_scored"] + answer["n_rejected"] == answer["n_read"]
    assert sum(1 for r in answer["results"] if r["error"]) == answer["n_rejected"]
    return answer


@fuzz(60)
@given(body=csv_bodies() | st.binary(max_size=200))
def test_csv_bodies_are_scored_or_rejected_by_line(scorer: Any, body: bytes) -> None:
    from fastapi import HTTPException

    from fedmol.scoring.bodies import parse_csv_molecules
    from fedmol.scoring.service import score_answer

    try:
        molecules = parse_csv_molecules(body)
    except HTTPException as exc:  # the whole body refused: no header, no smiles column, CSV syntax
        assert exc.status_code == 422 and exc.detail
        return
    # The service's CSV reader (Python's csv module) ends a line at CR, LF or CRLF; `fedmol score` at LF only.
    n_lines = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n").count(b"\n") + 1
    for error in molecules.errors or []:
        for named in LINE_IN_REASON.findall(error):
            assert 2 <= int(named) <= n_lines, (error, body)
    answer = _check_answer(score_answer(scorer, molecules, False, "json", {})[0], len(molecules))
    for error, row in zip(molecules.errors or [], answer["results"], strict=False):
        assert not error or row["error"] == error  # a row refused while reading keeps its line's reason


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                                         max_size=4), max_leaves=12)


@fuzz(150)
@given(payload=json_values | st.lists(st.text(max_size=12), max_size=8)
       | st.fixed_dictionaries({"smiles": st.lists(st.text(max_size=12), max_size=5)},
                               optional={"ids": st.lists(st.text(max_size=4) | st.integers(), max_size=5)}))
def test_any_json_is_molecules_or_a_422(payload: Any) -> None:
    from fastapi import HTTPException

    from fedmol.scoring.bodies import parse_json_molecules

    try:
        molecules = parse_json_molecules(json.dumps(payload).encode())
    except HTTPException as exc:
        assert exc.status_code == 422 and ("expected" in exc.detail or "'ids'" in exc.detail), exc.detail
        smiles = payload.get("smiles") if isinstance(payload, dict) else payload
        ids = payload.get("ids") if isinstance(payload, dict) else None
        assert not (isinstance(smiles, list) and all(isinstance(s, str) for s in smiles)
                    and (ids is None or isinstance(ids, list) and len(ids) == len(smiles)))
        return
    assert isinstance(molecules.smiles, list) and all(isinstance(s, str) for s in molecules.smiles)


# -- `fedmol score` on random files: scored + rejected = read, rejects on their lines ------------------
@fuzz(15, deadline=None)
@given(body=csv_bodies(), fmt=st.sampled_from(["csv", "smi"]))
def test_score_file_scores_or_rejects_every_record(scorer: Any, body: bytes, fmt: str) -> None:
    import pandas as pd

    from fedmol.datasets.readers import TableSpec, iter_records
    from fedmol.errors import InputError
    from fedmol.scoring.files import score_file

    with tempfile.TemporaryDirectory() as tmp:
        path, out, rejects = Path(tmp) / f"in.{fmt}", Path(tmp) / "out.csv", Path(tmp) / "rejects.csv"
        path.write_bytes(body)
        spec = TableSpec()
        try:
            records = pd.concat(list(iter_records(path, spec)) or [pd.DataFrame(columns=["line"])])
            counts = score_file(scorer, path, out, rejects, spec, chunk_size=4)
        except InputError:  # the whole file refused (its header), before any output
            assert not out.exists()
            return
        assert counts.read == len(records) and counts.scored + counts.rejected == counts.read
        if not counts.read:
            return
        scored, refused = pd.read_csv(out, keep_default_na=False), pd.read_csv(rejects, keep_default_na=False)
    assert len(scored) == counts.scored and len(refused) == counts.rejected
    assert (refused["reason"].astype(str).str.len() > 0).all()
    assert sorted([*scored["line"], *refused["line"]]) == records["line"].tolist()


# -- the live service -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def service(site: dict[str, Path]) -> Iterator[LocalService]:
    with local_service(site["model"], site["key"], "--mc-samples", "0", "--max-molecules", str(MAX_MOLECULES),
                       "--request-timeout", "60", tokens=(TOKEN,),
                       log_path=Path(site["model"]).parent / "serve-fuzz.log") as svc:
        yield svc


def _alive(svc: LocalService) -> None:
    os.kill(svc.pid, 0)  # raises if the process is gone
    assert httpx.get(f"{svc.url}/healthz", timeout=10).status_code == 200


def _fuzz(url: str, op: Any, strategy: Any, examples: int, seen: dict[str, set[int]]) -> None:
    """Send ``examples`` requests drawn from ``strategy`` (schemathesis cases of ``op``) with the token."""
    name = f"{op.method.upper()} {op.path}"

    @fuzz(examples, deadline=None)
    @given(case=strategy)
    def call(case: Any) -> None:
        response = case.call(base_url=url, headers=AUTH, timeout=60)
        seen.setdefault(name, set()).add(response.status_code)
        assert response.status_code < 500, (case.media_type, case.body, case.query, response.text[:300])
        if name == "POST /v1/score" and response.status_code == 200:
            ctype = response.headers.get("content-type", [""])[0]  # each header: a list of values
            if ctype.startswith("application/json"):
                answer = _check_answer(response.content, len(json.loads(response.content)["results"]))
                if isinstance(case.body, list):
                    assert answer["n_read"] == len(case.body)
            else:
                assert ctype.startswith("text/csv"), ctype

    call()


@pytest.mark.slow
def test_the_api_never_answers_5xx_to_requests_from_its_own_schema(service: LocalService) -> None:
    import schemathesis
    from schemathesis import GenerationMode

    # a CSV body is text: sent as schemathesis sends text/plain
    schemathesis.serializer.alias("text/csv", "text/plain")
    schema = schemathesis.openapi.from_url(f"{service.url}/openapi.json")
    operations = {f"{op.method.upper()} {op.path}": op for op in (r.ok() for r in schema.get_all_operations())}
    assert set(operations) >= {"GET /healthz", "GET /v1/model", "POST /v1/score"}
    seen: dict[str, set[int]] = {}
    for name, op in operations.items():
        if name != "POST /v1/score":  # no parameters: no invalid request to make
            _fuzz(service.url, op, op.as_strategy(GenerationMode.POSITIVE), 5, seen)
    score = operations["POST /v1/score"]
    _fuzz(service.url, score, score.as_strategy(GenerationMode.POSITIVE), 30, seen)
    # the schema lets ?format be any string (a 422 but for json and csv): also requests that get scored
    for fmt in ("json", "csv"):
        _fuzz(service.url, score, score.as_strategy(GenerationMode.POSITIVE, query={"format": fmt}), 15, seen)
    _fuzz(service.url, score, score.as_strategy(GenerationMode.NEGATIVE), 30, seen)
    _alive(service)
    # the fuzzing scored something and refused something, and the quota was not used up
    assert 200 in seen["POST /v1/score"] and seen["POST /v1/score"] & {413, 422}, seen
    assert httpx.post(f"{service.url}/v1/score", json=["CCO"], headers=AUTH, timeout=60).status_code == 200


@pytest.mark.slow
def test_deep_json_and_huge_integers_are_422s_on_the_live_service(service: LocalService) -> None:
    cases = {
        "100,000 levels of lists": b"[" * 100_000 + b"]" * 100_000,
        "100,000 levels of objects": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
        "deep inside a smiles list": b'{"smiles": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
        "a 5,000-digit integer": b'["CCO", ' + b"9" * 5000 + b"]",
        "a 5,000-digit integer id": b'{"smiles": ["CCO"], "ids": [' + b"1" * 5000 + b"]}",
        "a float beyond double": b'["CCO", 1e999999]',
        "a lone surrogate in a key": b'{"\\ud800": ["CCO"]}',
    }
    with httpx.Client(base_url=service.url, headers={**AUTH, "Content-Type": "application/json"},
                      timeout=60) as client:
        for name, body in cases.items():
            reply = client.post("/v1/score", content=body)
            assert reply.status_code == 422, (name, reply.status_code, reply.text[:300])
            assert "send a JSON list of SMILES" in reply.json()["detail"] or "expected" in reply.json()["detail"], name
        _alive(service)
        # the refused requests used none of the token's quota: a full request still passes
        reply = client.post("/v1/score", content=json.dumps(["C"] * MAX_MOLECULES).encode())
        assert reply.status_code == 200 and reply.json()["n_scored"] == MAX_MOLECULES


@pytest.mark.slow
@fuzz(12, deadline=None)
@given(depth=st.integers(2, 200_000), opener=st.sampled_from([b"[", b'{"smiles":', b'{"ids":[],"smiles":']))
def test_any_nesting_depth_is_a_422(service: LocalService, depth: int, opener: bytes) -> None:
    closer = b"]" if opener == b"[" else b"}"
    body = b"[" + opener * (depth - 1) + b"[]" + closer * (depth - 1) + b"]"
    reply = httpx.post(f"{service.url}/v1/score", content=body, timeout=60,
                       headers={**AUTH, "Content-Type": "application/json"})
    assert reply.status_code == 422, (depth, opener, reply.text[:200])


def test_a_malformed_multipart_body_is_a_422_not_a_500() -> None:
    """Found by the schema fuzz above: a multipart part whose header line is ``[]`` made python-multipart
    raise MultipartParseError ("Found invalid character 91 in header"), which escaped as a 500."""
    from fastapi.testclient import TestClient

    from fedmol.scoring.service import ServiceSettings, create_app

    app = create_app(object(), ServiceSettings(tokens=frozenset({TOKEN})), workers=object())
    with TestClient(app) as client:  # a server error would be raised here
        reply = client.post("/v1/score", content=b"--B\r\n[]\r\n\r\nCCO\r\n--B--\r\n",
                            headers={**AUTH, "Content-Type": "multipart/form-data; boundary=B"})
    assert reply.status_code == 422
    assert reply.json()["detail"].startswith("cannot read the multipart body (Found invalid character 91 in header")
