"""The molecules of a scoring request: a JSON list or object, a CSV body, or a CSV upload.

Every function here turns bad input into a 422 that says what to send, or rejects one row with its
reason (``Molecules.errors``) and keeps the others: a CSV row with the wrong field count or bytes
that are not UTF-8, a JSON SMILES with a lone surrogate.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass

from fastapi import HTTPException, Request

__all__ = ["CSV_TYPES", "MoleculeReader", "Molecules", "encodable", "parse_csv_molecules", "parse_json_molecules"]


@dataclass(frozen=True)
class Molecules:
    """The molecules of one request: SMILES and, when the caller gave them, ids; ``errors`` holds a
    reason per row already rejected while reading ("" for the others), or None when there is none."""

    smiles: list[str]
    ids: list[str] | None = None
    errors: list[str] | None = None

    def __len__(self) -> int:
        return len(self.smiles)


def parse_json_molecules(body: bytes) -> Molecules:
    """A JSON list of SMILES or ``{"smiles": [...], "ids": [...]}``; HTTPException(422) otherwise."""
    try:
        payload = json.loads(body or b"null")
    except RecursionError:
        raise HTTPException(422, "body is not valid JSON here: nested too deeply; send a JSON list of SMILES, "
                                 "{\"smiles\": [...]}, or a CSV file") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer of more than 4,300 digits
        reason = str(exc).splitlines()[0][:80] if not isinstance(exc, UnicodeDecodeError) else "not UTF-8"
        raise HTTPException(422, f"body is not valid JSON ({exc.__class__.__name__}: {reason}): send a JSON "
                                 "list of SMILES, {\"smiles\": [...]}, or a CSV file") from None
    ids = None
    if isinstance(payload, dict):
        ids = payload.get("ids")
        payload = payload.get("smiles")
    if not isinstance(payload, list) or not all(isinstance(s, str) for s in payload):
        raise HTTPException(422, "expected a JSON list of SMILES strings, or {\"smiles\": [...], \"ids\": [...]}")
    if ids is not None and (not isinstance(ids, list) or len(ids) != len(payload)):
        raise HTTPException(422, "'ids' must be a list as long as 'smiles'")
    if ids is not None and not all(isinstance(i, str | int | float) for i in ids):
        raise HTTPException(422, "'ids' must be strings or numbers")
    # A JSON string may hold a lone surrogate ("\\ud800"), which no SMILES has and UTF-8 cannot carry.
    errors = ["" if encodable(s) is s else "not valid Unicode: a lone surrogate (\\ud800-\\udfff)" for s in payload]
    return Molecules(payload, [encodable(str(i)) for i in ids] if ids is not None else None,
                     errors if any(errors) else None)


def parse_csv_molecules(data: bytes) -> Molecules:
    """A CSV with a header line: the ``smiles`` column (or the only column), ids from ``id``.

    Strict: a row whose field count differs from the header's, or with bytes that are not UTF-8,
    is rejected with its physical line (its SMILES and id left empty); blank lines are skipped.
    """
    text = data.decode("utf-8-sig", errors="surrogateescape")  # a bad byte spoils its row only
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    rows: list[tuple[int, list[str]]] = []  # (first physical line, fields)
    line = 1
    try:
        for fields in reader:
            if any(f.strip() for f in fields):
                if header is None:
                    header = [f.strip() for f in fields]
                else:
                    rows.append((line, fields))
            line = reader.line_num + 1
    except csv.Error as exc:
        raise HTTPException(422, f"cannot read the CSV at line {line}: {exc}") from None
    if header is None:
        raise HTTPException(422, "cannot read the CSV (no header line): expected a header line with a 'smiles' column")
    cols: dict[str, int] = {}
    for i, name in enumerate(header):
        cols.setdefault(name.lower(), i)
    if "smiles" not in cols:
        if len(header) != 1:
            raise HTTPException(422, f"the CSV has no 'smiles' column; its columns are {header}")
        cols["smiles"] = 0
    smiles_at, id_at = cols["smiles"], cols.get("id")
    smiles, ids, errors = [], [], []
    for line, fields in rows:
        error = ""
        if len(fields) != len(header):
            n = len(fields)
            error = f"line {line}: {n} field{'s' if n != 1 else ''}, the header has {len(header)}"
        elif not _is_utf8(fields):
            error = f"line {line}: not valid UTF-8"
        smiles.append("" if error else fields[smiles_at])
        ids.append("" if error or id_at is None else fields[id_at])
        errors.append(error)
    return Molecules(smiles, ids if id_at is not None else None, errors if any(errors) else None)


def _is_utf8(fields: list[str]) -> bool:
    try:
        "".join(fields).encode("utf-8")
    except UnicodeEncodeError:  # surrogates: bytes that were not UTF-8 (surrogateescape)
        return False
    return True


CSV_TYPES = ("text/csv", "text/plain", "application/csv")


class MoleculeReader:
    """FastAPI dependency: the molecules of a scoring request (a JSON body, a CSV body, or a CSV
    upload in the multipart field ``file``), at most ``max_molecules`` (413 beyond). The body's
    size in bytes is bounded before this by `BodyLimitMiddleware`."""

    def __init__(self, max_molecules: int) -> None:
        self.max_molecules = max_molecules

    async def __call__(self, request: Request) -> Molecules:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "multipart/form-data":
            try:
                form = await request.form()
            except ValueError as exc:  # python-multipart's errors on a malformed body (they escape Starlette)
                raise HTTPException(422, f"cannot read the multipart body ({str(exc).splitlines()[0][:80]}): "
                                         "upload a CSV file in the field 'file'") from None
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise HTTPException(422, "multipart upload needs a CSV file in the field 'file'")
            molecules = parse_csv_molecules(await upload.read())
        elif ctype in CSV_TYPES:
            molecules = parse_csv_molecules(await request.body())
        else:
            molecules = parse_json_molecules(await request.body())
        self.check_count(len(molecules))
        return molecules

    def check_count(self, n: int) -> None:
        if n > self.max_molecules:
            raise HTTPException(413, f"too many molecules: {n:,} in this request, the limit is "
                                     f"{self.max_molecules:,} per request; split them over several requests")


def encodable(text: str) -> str:
    """``text``, with lone surrogates (valid in a JSON string, not in UTF-8) written as ``\\udXXX``."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text
