"""What scoring (and preparation) refuse before any costly step, and what is no compound (#13.1, #13.5).

RDKit's largest-fragment chooser takes time that grows with the square of the fragment count (a
12 kB SMILES of 6,000 fragments took 20 s), so length, atoms as written and fragments are bounded
first; a dummy atom or an isotope no element has is no compound; ions and metals are scored.
"""

from __future__ import annotations

import time

import pytest

from fedmol.datasets.standardize import MAX_FRAGMENTS, MoleculeReject, Standardizer, StandardizeSettings


@pytest.fixture(scope="module", params=[True, False], ids=["standardize", "no-standardize"])
def std(request):
    return Standardizer(StandardizeSettings(enabled=request.param))


def _reason(std: Standardizer, smiles: str) -> str:
    try:
        std.from_smiles(smiles)
    except MoleculeReject as exc:
        return exc.reason
    return ""


@pytest.mark.parametrize("smiles, reason", [
    (".".join(["C"] * 6000), "too large: a SMILES of 11,999 characters > 10,000"),
    ("C." * 3000 + "C", "too many fragments: 3001 > 50"),
    ("C" * 5000, "too large: 5000 atoms as written > 1000"),
])
def test_hostile_smiles_are_rejected_before_any_costly_step(std, smiles, reason):
    start = time.perf_counter()
    assert _reason(std, smiles) == reason
    assert time.perf_counter() - start < 0.5  # the 6,000 fragments took 20 s in the chooser


def test_fragments_made_by_metal_disconnection_are_counted_before_the_chooser():
    smiles = "C(O[Na])" * (MAX_FRAGMENTS + 5)  # one fragment as written; cleanup cuts off every Na
    assert _reason(Standardizer(StandardizeSettings()), smiles) == f"too many fragments: {MAX_FRAGMENTS + 6} > 50"
    assert _reason(Standardizer(StandardizeSettings()), "C(O[Na])" * 10) == ""


def test_the_bounds_follow_max_heavy_atoms():
    big = Standardizer(StandardizeSettings(enabled=False, max_heavy_atoms=1000))
    assert _reason(big, "C" * 1000) == "" and _reason(big, "C" * 10_001) == "too large: 10001 atoms as written > 10000"
    small = Standardizer(StandardizeSettings(enabled=False))
    assert _reason(small, "C" * 900) == "too large: 900 heavy atoms > 100"  # parsed: within 10 x 100 as written


@pytest.mark.parametrize("smiles, reason", [
    ("*", "dummy atom (*): a query or attachment point, not a compound"),
    ("C[*:1]", "dummy atom (*): a query or attachment point, not a compound"),
    ("[300U]", "unknown isotope: 300U"),
    ("[999C]CO", "unknown isotope: 999C"),
    ("[U+6]", ""), ("[Fe]", ""), ("[13CH4]", ""), ("[2H]OC", ""), ("[Hg+2]", ""),
])
def test_what_is_a_compound(std, smiles, reason):
    assert _reason(std, smiles) == reason


def test_the_service_answers_hostile_smiles_quickly_with_reasons(site):
    from fastapi.testclient import TestClient

    from fedmol.datasets.keys import load_key
    from fedmol.scoring.scorer import Scorer
    from fedmol.scoring.service import ServiceSettings, create_app

    token = "limits-token-0123456789abcdef"
    scorer = Scorer(site["model"], load_key(site["key"]), mc_samples=0)
    with TestClient(create_app(scorer, ServiceSettings(tokens=frozenset({token})))) as client:
        start = time.perf_counter()
        r = client.post("/v1/score", json=[".".join(["C"] * 6000), "C." * 3000 + "C", "*", "[300U]", "[Fe]", "CCO"],
                        headers={"Authorization": f"Bearer {token}"})
        assert time.perf_counter() - start < 5
    assert r.status_code == 200
    errors = [x["error"] for x in r.json()["results"]]
    assert errors[0].startswith("too large") and errors[1].startswith("too many fragments")
    assert errors[2].startswith("dummy atom") and errors[3] == "unknown isotope: 300U" and errors[4:] == ["", ""]
