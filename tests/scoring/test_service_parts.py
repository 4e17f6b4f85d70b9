"""The scoring service's parts on their own: token auth and the rate-limit charge (`fedmol.scoring.access`),
body parsing (`fedmol.scoring.bodies`), and the app around a stand-in scorer (FastAPI's TestClient, no model
and no uvicorn: fast)."""

from __future__ import annotations

import asyncio
import csv
import io
import json

import pandas as pd
import pytest
from fastapi import HTTPException
from starlette.requests import Request

from fedmol.scoring.access import RateLimiter, TokenAuth, charge_quota
from fedmol.scoring.bodies import MoleculeReader, Molecules, parse_csv_molecules, parse_json_molecules
from fedmol.scoring.service import ServiceSettings, create_app, score_frame

TOKEN = "unit-token-0123456789abcdef"


def _request(body: bytes, content_type: str = "application/json", headers: dict[str, str] | None = None) -> Request:
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    raw = [(b"content-type", content_type.encode())] + [(k.lower().encode(), v.encode())
                                                         for k, v in (headers or {}).items()]
    scope = {"type": "http", "method": "POST", "path": "/v1/score", "headers": raw, "query_string": b"",
             "client": ("127.0.0.1", 5000)}
    return Request(scope, receive)


def _status(exc_info: pytest.ExceptionInfo[HTTPException]) -> tuple[int, str]:
    return exc_info.value.status_code, str(exc_info.value.detail)


# -- auth ------------------------------------------------------------------------------------------

def test_token_auth_accepts_a_known_token_only():
    auth = TokenAuth({TOKEN, "second-token-0123456789abcdef"})
    assert auth.check(f"Bearer {TOKEN}") == TOKEN
    assert auth.check(f"bearer   {TOKEN}  ") == TOKEN  # scheme is case-insensitive, spaces stripped
    assert auth(_request(b"", headers={"Authorization": f"Bearer {TOKEN}"})) == TOKEN
    for header, detail in [("", "missing access token"), (f"Basic {TOKEN}", "missing access token"),
                           ("Bearer ", "missing access token"), (f"Bearer {TOKEN}x", "invalid access token"),
                           (f"Bearer {TOKEN[:-1]}", "invalid access token")]:
        with pytest.raises(HTTPException) as exc:
            auth.check(header)
        assert _status(exc)[0] == 401 and detail in _status(exc)[1], header
        assert exc.value.headers["WWW-Authenticate"].startswith("Bearer")


def test_rate_limiter_refund_never_exceeds_capacity():
    limiter = RateLimiter(capacity=10, window=100.0)
    assert limiter.take(TOKEN, 10, now=0.0) == 0
    limiter.refund(TOKEN, 4)
    assert limiter.take(TOKEN, 4, now=0.0) == 0 and limiter.take(TOKEN, 1, now=0.0) > 0
    limiter.refund(TOKEN, 50)
    assert limiter.take(TOKEN, 10, now=0.0) == 0 and limiter.take(TOKEN, 1, now=0.0) > 0


def test_charge_quota_answers_429_with_retry_after():
    limiter = RateLimiter(capacity=10, window=100.0)
    charge_quota(limiter, TOKEN, 10)
    with pytest.raises(HTTPException) as exc:
        charge_quota(limiter, TOKEN, 1)
    assert exc.value.status_code == 429 and "at most 10 molecules per 100 s" in exc.value.detail
    assert int(exc.value.headers["Retry-After"]) >= 10
    charge_quota(limiter, "another-token-0123456789", 10)  # every token has its own bucket


# -- bodies ----------------------------------------------------------------------------------------

def test_parse_json_list_and_object():
    assert parse_json_molecules(b'["CCO", "c1ccccc1O"]') == Molecules(["CCO", "c1ccccc1O"], None)
    assert parse_json_molecules(b'{"smiles": ["CCO"], "ids": [7]}') == Molecules(["CCO"], ["7"])
    assert parse_json_molecules(b"[]") == Molecules([], None)


@pytest.mark.parametrize("body, detail", [
    (b"{not json", "not valid JSON"),
    (b"", "list of SMILES"),
    (b"[1, 2]", "list of SMILES"),
    (b'{"ids": ["a"]}', "list of SMILES"),
    (b'{"smiles": ["CCO"], "ids": ["a", "b"]}', "'ids' must be a list as long as 'smiles'"),
    (b"\xff\xfe\xfa", "not valid JSON"),
])
def test_parse_json_rejects_bad_bodies_with_422(body, detail):
    with pytest.raises(HTTPException) as exc:
        parse_json_molecules(body)
    assert exc.value.status_code == 422 and detail in exc.value.detail


def test_parse_csv_columns():
    assert parse_csv_molecules(b"id,smiles\nm1,CCO\nm2,c1ccccc1O\n") == Molecules(["CCO", "c1ccccc1O"], ["m1", "m2"])
    assert parse_csv_molecules(b"SMILES,value\nCCO,1\n") == Molecules(["CCO"], None)  # case-insensitive
    assert parse_csv_molecules(b"structure\nCCO\nCCN\n") == Molecules(["CCO", "CCN"], None)  # the only column
    with pytest.raises(HTTPException) as exc:
        parse_csv_molecules(b"name,value\nx,1\n")
    assert exc.value.status_code == 422 and "no 'smiles' column" in exc.value.detail
    with pytest.raises(HTTPException) as exc:
        parse_csv_molecules(b"")
    assert exc.value.status_code == 422 and "header line" in exc.value.detail


def test_molecule_reader_dispatches_on_content_type_and_limits_the_count():
    reader = MoleculeReader(max_molecules=2)
    run = asyncio.run
    assert run(reader(_request(b'["CCO"]'))) == Molecules(["CCO"], None)
    assert run(reader(_request(b"smiles\nCCO\n", "text/csv; charset=utf-8"))) == Molecules(["CCO"], None)
    assert run(reader(_request(b"smiles\nCCO\n", "text/plain"))) == Molecules(["CCO"], None)
    boundary = "XyZ"
    multipart = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.csv\"\r\n"
                 f"Content-Type: text/csv\r\n\r\nid,smiles\r\nm1,CCO\r\n\r\n--{boundary}--\r\n").encode()
    assert run(reader(_request(multipart, f"multipart/form-data; boundary={boundary}"))) == Molecules(["CCO"], ["m1"])
    no_file = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nx\r\n"
               f"--{boundary}--\r\n").encode()
    with pytest.raises(HTTPException) as exc:
        run(reader(_request(no_file, f"multipart/form-data; boundary={boundary}")))
    assert exc.value.status_code == 422 and "field 'file'" in exc.value.detail
    with pytest.raises(HTTPException) as exc:
        run(reader(_request(json.dumps(["C"] * 3).encode())))
    assert exc.value.status_code == 413 and "3 in this request, the limit is 2" in exc.value.detail


# -- scoring and the app, around a stand-in scorer --------------------------------------------------

class FakeScorer:
    """Scores every SMILES as its length; '' and anything with '(' are rejected."""

    tasks: list = []
    columns = ["length"]
    calibration_note = "none"

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def score(self, smiles: list[str]) -> pd.DataFrame:
        self.calls.append(list(smiles))
        errors = ["empty SMILES" if not s else "unparsable SMILES" if "(" in s else "" for s in smiles]
        ok = [not e for e in errors]
        return pd.DataFrame({"smiles": smiles,
                             "canonical_smiles": [s if k else "" for s, k in zip(smiles, ok, strict=True)],
                             "error": errors,
                             "length": [float(len(s)) if k else float("nan") for s, k in zip(smiles, ok, strict=True)]})

    def describe(self) -> dict:
        return {"tasks": []}


def test_score_frame_adds_index_ids_and_depictions():
    frame = score_frame(FakeScorer(), Molecules(["CCO", "x("], ["a", "b"]), depict=True)
    assert list(frame.columns[:3]) == ["index", "id", "smiles"] and list(frame["id"]) == ["a", "b"]
    assert frame["svg"][0].startswith("<svg") and frame["svg"][1] == ""
    frame = score_frame(FakeScorer(), Molecules(["CCO", "CC"]), depict=False)
    assert list(frame["id"]) == ["0", "1"] and "svg" not in frame.columns


@pytest.fixture()
def client():
    from fastapi.testclient import TestClient

    scorer = FakeScorer()
    settings = ServiceSettings(tokens=frozenset({TOKEN}), max_molecules=5, max_request_bytes=2000,
                               rate_molecules=8, rate_window=3600.0)
    with TestClient(create_app(scorer, settings)) as c:
        c.scorer = scorer
        yield c


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def test_app_scores_json_and_csv(client):
    r = client.post("/v1/score", json={"smiles": ["CCO", "x(", ""], "ids": ["a", "b", "c"]}, headers=_auth())
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["n_read"], body["n_scored"], body["n_rejected"]) == (3, 1, 2)
    assert [x["length"] for x in body["results"]] == [3.0, None, None]
    csv_headers = {**_auth(), "Content-Type": "text/csv"}
    r = client.post("/v1/score?format=csv", content="id,smiles\nm1,CCO\n", headers=csv_headers)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert r.text.splitlines()[0].startswith("index,id,smiles,canonical_smiles,error,length")


def test_app_checks_token_format_and_limits(client):
    assert client.post("/v1/score", json=["CCO"]).status_code == 401
    assert client.get("/v1/model").status_code == 401
    assert client.get("/v1/model", headers=_auth()).json()["limits"]["max_molecules"] == 5
    assert client.get("/healthz").json()["status"] == "ok"
    r = client.post("/v1/score?format=xml", json=["CCO"], headers=_auth())
    assert r.status_code == 422 and "json or csv" in r.json()["detail"]
    r = client.post("/v1/score", json=["C"] * 6, headers=_auth())
    assert r.status_code == 413 and "limit is 5 per request" in r.json()["detail"]
    r = client.post("/v1/score", json=["C" * 500] * 5, headers=_auth())
    assert r.status_code == 413 and "request body too large" in r.json()["detail"]
    assert client.scorer.calls == []  # nothing above reached the scorer
    assert client.post("/v1/score", json=["C"] * 5, headers=_auth()).status_code == 200
    r = client.post("/v1/score", json=["C"] * 5, headers=_auth())
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0


# -- 13.2: a CSV row with the wrong field count ---------------------------------------------------

def test_csv_row_with_the_wrong_field_count_is_rejected_with_its_line():
    # pandas took the extra field of the first data row as the index and shifted every column.
    m = parse_csv_molecules(b"id,smiles\nm1,CCO,extra\nm2,c1ccccc1O\n\nm4\n\"m5\nx\",CCN\n")
    assert m.smiles == ["", "c1ccccc1O", "", "CCN"]
    assert m.ids == ["", "m2", "", "m5\nx"]
    assert m.errors == ["line 2: 3 fields, the header has 2", "", "line 5: 1 field, the header has 2", ""]
    m = parse_csv_molecules(b"smiles\r\nCCO\r\nCCN\r\n")
    assert m == Molecules(["CCO", "CCN"])  # no reject, no error list


def test_csv_bad_bytes_reject_their_row_only():
    m = parse_csv_molecules("id,smiles\nm1,CCO\nm2,C\xffC\n".encode("latin-1"))
    assert m.smiles == ["CCO", ""] and m.errors == ["", "line 3: not valid UTF-8"]


def test_app_keeps_columns_when_a_row_has_an_extra_field(client):
    r = client.post("/v1/score", content="id,smiles\nm1,CCO,extra\nm2,CCCC\n",
                    headers={**_auth(), "Content-Type": "text/csv"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["n_read"], body["n_scored"], body["n_rejected"]) == (2, 1, 1)
    first, second = body["results"]
    assert first["error"] == "line 2: 3 fields, the header has 2" and first["length"] is None
    assert (second["id"], second["smiles"], second["length"]) == ("m2", "CCCC", 4.0)


# -- 13.3: a per-row failure is that row's reject, and leaves no state behind -----------------------

@pytest.fixture(scope="module")
def real_client(site):
    from fastapi.testclient import TestClient

    from fedmol.datasets.keys import load_key
    from fedmol.scoring.scorer import Scorer

    scorer = Scorer(site["model"], load_key(site["key"]), mc_samples=0)
    settings = ServiceSettings(tokens=frozenset({TOKEN}))
    with TestClient(create_app(scorer, settings)) as c:
        c.scorer = scorer
        yield c


def test_a_lone_surrogate_is_a_reject_and_the_next_request_is_unharmed(real_client):
    # json.dumps escapes the surrogate as \ud800, which json.loads turns back into a lone surrogate.
    body = json.dumps({"smiles": ["CCO", "C\ud800C", "c1ccccc1O"], "ids": ["a", "b\udfff", "c"]})
    r = real_client.post("/v1/score", content=body, headers={**_auth(), "Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["error"] == "" for x in results] == [True, False, True]
    assert results[1]["error"].startswith("not valid Unicode") and results[1]["logS"] is None
    assert results[1]["smiles"] == "C\\ud800C" and results[1]["id"] == "b\\udfff"  # shown escaped
    r = real_client.post("/v1/score", json=["CCN"], headers=_auth())  # failed with 500 "shape mismatch"
    assert r.status_code == 200 and r.json()["n_scored"] == 1
    r = real_client.post("/v1/score?format=csv", content=body, headers={**_auth(), "Content-Type": "application/json"})
    assert r.status_code == 200 and "C\\ud800C" in r.text


def test_the_scorer_rejects_any_failing_row_and_keeps_no_rows_of_a_call(real_client):
    scorer = real_client.scorer
    block = scorer.prepare(["CCO", "C\ud800C", "CCN"])  # RDKit raised UnicodeEncodeError, not MoleculeReject
    assert block.errors[1].startswith("unparsable SMILES") and list(block.ok) == [0, 2] and block.X.shape[0] == 2
    assert scorer.prepare(["CC"]).X.shape[0] == 1


# -- 13.4: JSON that breaks the parser is a 422; the quota is charged for molecules scored -----------

@pytest.mark.parametrize("body, detail", [
    (b"[" + b"1" * 5000 + b"]", "integer"),  # ValueError: more than 4,300 digits
    (b"[" * 100_000 + b"]" * 100_000, "nested"),  # RecursionError
    (b'{"smiles": ["CCO"], "ids": [' + b"[" * 900 + b"]" * 900 + b"]}", "'ids'"),  # str() of it may recurse
])
def test_json_that_breaks_the_parser_is_422(body, detail):
    with pytest.raises(HTTPException) as exc:
        parse_json_molecules(body)
    assert exc.value.status_code == 422 and detail in exc.value.detail


def test_app_answers_422_to_hostile_json():
    from fastapi.testclient import TestClient

    settings = ServiceSettings(tokens=frozenset({TOKEN}), max_request_bytes=1_000_000)
    with TestClient(create_app(FakeScorer(), settings), raise_server_exceptions=False) as c:
        for body in (b"[" + b"1" * 5000 + b"]", b"[" * 100_000 + b"]" * 100_000):
            r = c.post("/v1/score", content=body, headers={**_auth(), "Content-Type": "application/json"})
            assert r.status_code == 422, r.text[:200]


def test_quota_is_charged_for_molecules_scored(client):
    # rate 8 per window: 4 of these 5 are rejected, so 1 is charged and 7 remain
    assert client.post("/v1/score", json=["CC", "x(", "", "y(", "z("], headers=_auth()).status_code == 200
    assert client.post("/v1/score", json=["C"] * 5, headers=_auth()).status_code == 200  # 2 remain
    r = client.post("/v1/score", json=["C"] * 3, headers=_auth())
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0


def test_a_request_that_fails_in_scoring_costs_no_quota(client):
    from fastapi.testclient import TestClient

    broken = FakeScorer()
    broken.score = lambda smiles: (_ for _ in ()).throw(RuntimeError("model broke"))
    settings = ServiceSettings(tokens=frozenset({TOKEN}), max_molecules=5, rate_molecules=5)
    with TestClient(create_app(broken, settings), raise_server_exceptions=False) as c:
        assert c.post("/v1/score", json=["C"] * 5, headers=_auth()).status_code == 500
        assert c.app.state.limiter.take(TOKEN, 5) == 0  # the whole bucket is still there


# -- 13.5: a stalled body times out ---------------------------------------------------------------

def test_a_stalled_body_is_answered_408_and_a_complete_one_passes():
    from fedmol.scoring.access import BodyLimitMiddleware

    async def app(scope, receive, send):  # reads the body, then answers 200
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def run(chunks: list[bytes], stall: bool) -> list[dict]:
        sent: list[dict] = []
        queue = list(chunks)

        async def receive() -> dict:
            if queue:
                return {"type": "http.request", "body": queue.pop(0), "more_body": bool(queue) or stall}
            await asyncio.sleep(3600)  # the client stalls
            return {}

        async def send(message: dict) -> None:
            sent.append(message)

        guard = BodyLimitMiddleware(app, limit=100, timeout=0.2)
        await asyncio.wait_for(guard({"type": "http", "headers": [(b"content-length", b"50")]}, receive, send), 5)
        return sent

    sent = asyncio.run(run([b"x" * 10], stall=True))
    assert sent[0]["status"] == 408 and (b"connection", b"close") in sent[0]["headers"]
    assert b"not received within 0.2 s" in sent[1]["body"]
    assert asyncio.run(run([b"x" * 10, b"y" * 10], stall=False))[0]["status"] == 200


# -- 13.5: wrong tokens are throttled per address --------------------------------------------------

def test_wrong_tokens_are_throttled_per_client_address():
    auth = TokenAuth({TOKEN}, max_failures=3, failure_window=30.0)
    for _ in range(3):
        with pytest.raises(HTTPException) as exc:
            auth.check("Bearer wrong-token-0123456789abcdef", "10.0.0.1", now=0.0)
        assert exc.value.status_code == 401
    with pytest.raises(HTTPException) as exc:  # throttled: even the right token waits
        auth.check(f"Bearer {TOKEN}", "10.0.0.1", now=1.0)
    assert exc.value.status_code == 429 and int(exc.value.headers["Retry-After"]) == 9
    assert auth.check(f"Bearer {TOKEN}", "10.0.0.2", now=1.0) == TOKEN  # another address is not
    assert auth.check(f"Bearer {TOKEN}", "10.0.0.1", now=10.0) == TOKEN  # one try refilled after 10 s


def test_rate_limiter_forgets_refilled_buckets():
    limiter = RateLimiter(capacity=2, window=10.0)
    for i in range(20):
        limiter.take(f"10.0.0.{i}", 1, now=0.0)
    limiter.prune(now=1.0, keep=5)
    assert len(limiter._buckets) == 20  # none refilled yet
    limiter.take("late", 1, now=9.0)
    limiter.prune(now=9.0, keep=5)
    assert list(limiter._buckets) == ["late"]


# -- 13.5: no CDN-loaded docs on the token's origin; a strict content security policy ---------------

def test_no_docs_pages_and_security_headers(client):
    assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404
    assert "/v1/score" in client.get("/openapi.json").json()["paths"]
    page = client.get("/")
    assert page.status_code == 200 and "/docs" not in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "cdn" not in csp
    assert client.post("/v1/score", json=["CCO"]).headers["x-content-type-options"] == "nosniff"


# -- 13.5: depictions are bounded in bytes; CSV answers cannot start a formula ----------------------

def test_depictions_stop_at_the_byte_budget():
    from fedmol.scoring.service import depictions

    one = len(depictions(["CCO"])[0])
    svgs = depictions(["CCO"] * 10 + ["", "CCO"], max_bytes=3 * one + 10)
    assert [bool(x) for x in svgs] == [True] * 3 + [False] * 9
    assert [bool(x) for x in depictions(["CCO", "", "CCN", "CCC"], max_count=2)] == [True, False, True, False]


def test_depicted_answer_says_how_many_were_drawn(client, monkeypatch):
    import fedmol.scoring.service as service

    monkeypatch.setattr(service, "depictions", lambda smiles: ["<svg/>"] + [""] * (len(smiles) - 1))
    body = client.post("/v1/score?depict=true", json=["CC", "CCC", "x("], headers=_auth()).json()
    assert body["n_depicted"] == 1 and body["n_scored"] == 2 and [bool(r["svg"]) for r in body["results"]] == [
        True, False, False]
    assert "n_depicted" not in client.post("/v1/score", json=["CC"], headers=_auth()).json()


def test_csv_answer_neutralises_formulas(client):
    body = {"smiles": ["CCO", "=1+1", "@SUM(A1)"], "ids": ["=HYPERLINK(\"http://x\")", "-5", "+a"]}
    r = client.post("/v1/score?format=csv", json=body, headers=_auth())
    rows = list(csv.reader(io.StringIO(r.text)))
    header = rows[0]
    ids = [row[header.index("id")] for row in rows[1:]]
    smiles = [row[header.index("smiles")] for row in rows[1:]]
    assert ids == ["'=HYPERLINK(\"http://x\")", "'-5", "'+a"] and smiles == ["CCO", "'=1+1", "'@SUM(A1)"]
    assert r.text.count("\n") == 4 and rows[1][header.index("length")] == "3.0"  # numbers untouched


def test_oversized_headers_are_431(client):
    r = client.get("/healthz", headers={"X-Big": "a" * 20_000})
    assert r.status_code == 431 and "headers too large" in r.json()["detail"]
    assert client.get("/healthz", headers={"X-Small": "a" * 1000}).status_code == 200
