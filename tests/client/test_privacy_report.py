"""`fedmol site report`: the site's privacy evidence in one document, from its own files.

Unit tests on synthetic files written by the contracts (the outbox ledger with and without the
fields `outbox_provenance` adds, an audit JSON with its plot, a DP budget file), and the issue's
test: the report of a real 2-site federation (on loopback, each site a SuperNode with its site
runtime), one run plain and one with secure aggregation, whose rounds, bytes and array names are
the ledger's, with secure aggregation and the FAB's hash as they were.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from fedmol import wire
from fedmol.cli import main
from fedmol.client.ledger import read_ledger, size
from fedmol.client.privacy_report import build, html_document, markdown
from fedmol.client.provenance import outbox_provenance
from fedmol.client.site import RoundReply, SiteNode
from fedmol.config import FederationConfig
from tests.server.synthetic import synthetic_store

TASKS = [("c1", "classification"), ("c2", "classification")]
ARRAYS = {"trunk.0.weight": np.ones((1024, 32), np.float32), "trunk.0.bias": np.zeros(32, np.float32),
          "heads.consortium.classification.weight": np.ones((2, 32), np.float32)}
REPORT = {wire.REP_SITE: "acme", wire.REP_TASK_METRICS: json.dumps({"test": {"c1": {}, "private:cla:0": {}}})}
# A PNG of one pixel: what the audit's plot is, as far as the report cares.
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9aw"
                       "AAAABJRU5ErkJggg==")


def _store(root: Path, site_name: str = "acme") -> Path:
    return synthetic_store(40, 64, TASKS, seed=0, site_name=site_name).save(root / "store")


def _send(site: SiteNode, fid: str, rounds: int = 2) -> None:
    for rnd in range(1, rounds + 1):
        site.record_outbox(RoundReply({k: v + rnd for k, v in ARRAYS.items()},
                                      {wire.TRAIN_LOSS: 0.5, wire.NUM_TRAIN_LABELS: 40.0}, REPORT),
                           phase="train", server_round=rnd, federation_id=fid)
        site.record_outbox(RoundReply(None, {wire.VALID_LOSS: 0.4}, REPORT), phase="evaluate",
                           server_round=rnd, federation_id=fid)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """Federation "old" written before the new ledger fields, "new" with them (secure aggregation, int8
    asked for: float32 travels), "plain" with them and no secure aggregation (int8)."""
    path = _store(tmp_path)
    site = SiteNode(path)
    _send(site, "old")
    run_config = FederationConfig(transport_dtype="int8").to_run_config()
    site.provenance = outbox_provenance(FederationConfig(transport_dtype="int8", secure_aggregation=True),
                                        run_config, secure_aggregation=True, fab_hash="ab" * 32)
    _send(site, "new", rounds=3)
    site.provenance = outbox_provenance(FederationConfig(transport_dtype="int8"), run_config,
                                        secure_aggregation=False)
    _send(site, "plain", rounds=1)
    return path


def _audit(store: Path, stamp: str, auc: float, federation: str | None = "new") -> Path:
    folder = store / "privacy"
    folder.mkdir(exist_ok=True)
    (folder / f"audit-{stamp}.png").write_bytes(PNG)
    attack = {"auc": auc, "tpr_at_1pct_fpr": 0.021, "tpr_at_0.1pct_fpr": 0.003, "n_members": 1200,
              "n_nonmembers": 300}
    data = {"kind": "fedmol.site-audit", "version": 1, "created": "2026-12-01T10:00:00Z", "site": "acme",
            "federation_id": federation, "members": "training folds", "nonmembers": "test fold",
            "models": {"shared": {"attacks": {"loss": attack, "confidence": attack, "lira": None}},
                       "personalised": None},
            "canaries": {"n": 10, "mean_exposure": 1.5, "max_exposure": 3.25, "max_possible_exposure": 13.3,
                         "reference_size": 10000},
            "plot": f"audit-{stamp}.png", "sources": {"shared": "federations/new/shared_final.npz",
                                                      "personalised": None}}
    path = folder / f"audit-{stamp}.json"
    path.write_text(json.dumps(data))
    return path


def _dp(store: Path, fid: str = "new") -> None:
    folder = store / "privacy"
    folder.mkdir(exist_ok=True)
    (folder / f"dp-{fid}.json").write_text(json.dumps({
        "kind": "fedmol.site-dp", "version": 1, "federation_id": fid, "mechanism": "site-dp-sgd",
        "target_epsilon": 8.0, "delta": 1e-5, "noise_multiplier": 0.93, "max_grad_norm": 1.0,
        "sample_rate": 0.0312, "accountant": "dp-accounting RDP", "epsilon_spent": 5.4321,
        "rounds": [{"round": 1, "steps": 32, "epsilon_spent": 3.1}, {"round": 2, "steps": 32, "epsilon_spent": 4.4},
                   {"round": 3, "steps": 32, "epsilon_spent": 5.4321}]}))


def _table(text: str, header_start: str) -> list[list[str]]:
    """The rows of the Markdown table whose header starts with ``header_start`` (first one found)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header_start}"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip().replace("\\|", "|") for c in line.strip("|").split(" | ")])
    return rows


def _section(text: str, title: str) -> str:
    return text.split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def test_the_ledger_records_secure_aggregation_transport_and_the_app(store: Path) -> None:
    from importlib import metadata

    from fedmol.client.provenance import config_hash

    entries = read_ledger(store)
    old = [e for e in entries if e["federation_id"] == "old"]
    assert old and all("secure_aggregation" not in e and "app" not in e for e in old)
    new = [e for e in entries if e["federation_id"] == "new"]
    assert len(new) == 6 and all(e["secure_aggregation"] is True and e["transport"] == "float32" for e in new)
    assert new[0]["app"] == {"fedmol": metadata.version("fedmol"), "flwr": metadata.version("flwr"),
                             "run_config_sha256": config_hash(FederationConfig(transport_dtype="int8").to_run_config()),
                             "fab_hash": "ab" * 32}
    plain = [e for e in entries if e["federation_id"] == "plain"]
    assert all(e["secure_aggregation"] is False and e["transport"] == "int8" and e["app"]["fab_hash"] is None
               for e in plain)


def test_the_report_says_what_left_by_round_and_unknown_for_an_old_ledger(store: Path, capsys) -> None:
    assert main(["site", "report", str(store)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("# Privacy report of site acme")
    overview = {row[0]: row for row in _table(text, "federation")}
    assert set(overview) == {"old", "new", "plain"}
    assert overview["old"][7:9] == ["unknown", "unknown"]  # secure aggregation, transport
    assert overview["new"][3:5] == ["3", "6"] and overview["new"][7:10] == ["yes", "float32", "no"]
    assert overview["plain"][7:9] == ["no", "int8"]
    entries = read_ledger(store)
    n_new = sum(e["bytes_total"] for e in entries if e["federation_id"] == "new")
    assert overview["new"][5:7] == [size(n_new), f"{n_new:,}"]
    total = sum(e["bytes_total"] for e in entries)
    assert f"In all: {len(entries)} replies, {size(total)} ({total:,} bytes) sent in 3 federations." in text

    new = _section(text, "What left the site: federation new")
    rounds = _table(new, "round")
    assert [r[0] for r in rounds] == ["1", "2", "3"]
    for r in rounds:
        sent = sum(e["bytes_total"] for e in entries if e["federation_id"] == "new" and e["round"] == int(r[0]))
        assert r[1] == "train, evaluate" and r[2] == "3" and r[4] == f"{sent:,}" and r[6] == "yes"
    arrays = _table(new, "array")
    assert [a[0] for a in arrays] == list(ARRAYS)
    assert arrays[0][1:4] == ["1024x32", "float32", "1-3"]
    assert arrays[0][5] == f"{3 * 1024 * 32 * 4:,}"
    sent = dict(_table(new, "what"))
    assert sent["metrics"] == ", ".join([*sorted([wire.TRAIN_LOSS, wire.NUM_TRAIN_LABELS]), wire.VALID_LOSS])
    assert sent["report keys"] == ", ".join(sorted(REPORT))
    assert sent["task metrics"] == "c1, private:cla:0"  # the private task's label, as sent; its name never was
    app = dict(_table(new, "app"))
    assert app["FAB hash"] == "ab" * 32 and app["run config"].startswith("sha256:") and app["transport"] == "float32"
    old_app = dict(_table(_section(text, "What left the site: federation old"), "app"))
    assert set(old_app.values()) == {"unknown"}  # an old ledger: none of it recorded
    plain_app = dict(_table(_section(text, "What left the site: federation plain"), "app"))
    assert plain_app["FAB hash"] == "not known to the site"

    assert f"no audit run yet: fedmol site audit {store}" in text
    for fid in ("old", "new", "plain"):
        assert f"no per-compound DP in federation {fid}" in text
    settings = dict(_table(text, "preparation setting"))
    assert json.loads(settings["featurize"]) == {"n_bits": 64, "radius": 2}
    assert "reference_hash" not in settings and "key_fingerprint" not in text  # public settings only
    assert re.search(r"Report made \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\.", text)


def test_the_newest_audit_with_its_plot_beside_a_markdown_report(store: Path, tmp_path: Path, capsys) -> None:
    _audit(store, "20261201T090000Z", 0.71)
    _audit(store, "20261201T100000Z", 0.523)  # the newest
    out = tmp_path / "out" / "report.md"
    assert main(["site", "report", str(store), "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    text = out.read_text()
    audit = _section(text, "Membership-inference audit")
    assert "Newest audit: audit-20261201T100000Z.json" in audit
    rows = _table(audit, "model")
    assert rows[0] == ["shared", "loss", "0.523", "0.021", "0.003", "1,200", "300"]
    assert rows[2][:3] == ["shared", "lira", "not run"] and rows[3][:3] == ["personalised", "-", "not audited"]
    assert "mean exposure 1.50, max 3.25 of at most 13.30" in audit
    assert "Models audited: shared: federations/new/shared_final.npz; personalised: none." in audit
    assert "![membership-inference audit: ROC curves](report-audit-audit-20261201T100000Z.png)" in audit
    assert (out.parent / "report-audit-audit-20261201T100000Z.png").read_bytes() == PNG
    # An audit of another federation is not this federation's.
    _audit(store, "20261201T110000Z", 0.9, federation="other")
    text = main(["site", "report", str(store), "--federation", "new"]) == 0 and capsys.readouterr().out
    assert "Newest audit: audit-20261201T100000Z.json" in text


def test_the_dp_budget_per_federation_with_its_plot(store: Path, tmp_path: Path) -> None:
    _dp(store)
    out = tmp_path / "r.md"
    assert main(["site", "report", str(store), "--out", str(out)]) == 0
    dp = _section(out.read_text(), "Per-compound differential privacy")
    assert "no per-compound DP in federation old" in dp and "no per-compound DP in federation plain" in dp
    assert "no per-compound DP in federation new" not in dp
    settings = dict(_table(dp, "setting"))
    assert settings["mechanism"] == "site-dp-sgd" and settings["target epsilon"] == "8.000"
    assert settings["epsilon spent"] == "5.432" and settings["delta"] == "1e-05"
    assert _table(dp, "round") == [["1", "32", "3.100"], ["2", "32", "4.400"], ["3", "32", "5.432"]]
    assert (tmp_path / "r-dp-new.png").read_bytes().startswith(b"\x89PNG")
    assert "(r-dp-new.png)" in dp
    overview = {row[0]: row for row in _table(out.read_text(), "federation")}
    assert overview["new"][9] == "yes" and overview["old"][9] == "no"


def test_html_is_self_contained_and_escapes_every_value(tmp_path: Path, capsys) -> None:
    path = _store(tmp_path, site_name="<script>alert(1)</script>")
    site = SiteNode(path)
    _send(site, "fed<b>&\"x\"")
    _audit(path, "20261201T100000Z", 0.5, federation=None)
    _dp(path, "fed<b>&\"x\"")
    out = tmp_path / "report.html"
    assert main(["site", "report", str(path), "--format", "html", "--out", str(out)]) == 0
    page = out.read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "fed<b>" not in page and "fed&lt;b&gt;&amp;&quot;x&quot;" in page
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 2 and base64.b64decode(images[0]) == PNG  # the audit's plot, and the DP plot
    assert "<style>" in page and "http" not in page.split("<body>")[0]  # nothing fetched from elsewhere
    assert list(tmp_path.glob("report-*")) == []  # no files beside an HTML report
    # Markdown escapes it too: a renderer that passes HTML through shows the text.
    text = markdown(build(path))
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert "<script>" not in html_document(build(path))


def test_an_unknown_federation_or_format_is_named(store: Path, capsys) -> None:
    assert main(["site", "report", str(store), "--federation", "nope"]) != 0
    err = capsys.readouterr().err
    assert "federation 'nope' is not in" in err and "old, new, plain" in err
    assert main(["site", "report", str(store), "--format", "pdf"]) != 0
    assert "use md or html" in capsys.readouterr().err


def test_a_site_that_sent_nothing_gets_a_report_that_says_so(tmp_path: Path, capsys) -> None:
    path = _store(tmp_path)
    assert main(["site", "report", str(path)]) == 0
    text = capsys.readouterr().out
    assert "This site has sent nothing" in text and "no audit run yet" in text
    assert main(["site", "report", str(tmp_path / "nowhere")]) != 0
    assert "is not a site store" in capsys.readouterr().err


def test_the_site_runtime_hands_the_fab_hash_to_the_app(monkeypatch, tmp_path: Path) -> None:
    """The worker sets `FAB_HASH` around each task (the ledger's app.fab_hash), and resets it after."""
    from flwr.app import ConfigRecord, Message, RecordDict
    from flwr.cli.build import build_fab_from_disk

    import fedmol.client.client_app as client_app
    from fedmol.client.provenance import FAB_HASH
    from fedmol.deploy.launcher import write_flower_app
    from tests.client.test_worker import RuntimeAPI, start, stop

    seen: list[str | None] = []

    def app(message, context):
        seen.append(FAB_HASH.get())
        return Message(RecordDict({"reply": ConfigRecord({"ok": 1})}), reply_to=message)

    monkeypatch.setattr(client_app, "app", app)
    fab = build_fab_from_disk(write_flower_app(tmp_path / "app"))
    api = RuntimeAPI()
    try:
        api.add_run(1, fab, {})
        task_id, _ = api.send(1)
        runtime, thread = start(api)
        try:
            api.wait_finished(task_id)
        finally:
            stop(runtime, thread)
    finally:
        api.close()
    assert seen == [api.runs[1]] and len(seen[0]) == 64
    assert FAB_HASH.get() is None


def test_without_a_budget_file_the_ledgers_dp_field_is_reported(store: Path, capsys) -> None:
    entry = {**read_ledger(store)[0], "federation_id": "ledger-dp", "round": 1,
             "dp": {"mechanism": "site-dp-sgd", "epsilon_spent": 2.5, "target_epsilon": 3.0, "delta": 1e-5}}
    with (store / "outbox.jsonl").open("a") as fh:
        fh.write(json.dumps(entry) + "\n")
    assert main(["site", "report", str(store), "--federation", "ledger-dp"]) == 0
    dp = _section(capsys.readouterr().out, "Per-compound differential privacy")
    assert ("its ledger says: mechanism site-dp-sgd, target epsilon 3.000, delta 1e-05, epsilon spent 2.500 "
            "after round 1") in dp
    assert _table(dp, "round") == [["1", "2.500"]]


# -- the test: the report of a real 2-site federation ---------------------------------------------
@pytest.fixture(scope="module")
def federated(tmp_path_factory) -> dict[str, object]:
    """Two synthetic sites on loopback, each a SuperNode with its site runtime (`fedmol site worker`),
    and two federations of 2 rounds each (1,024 bits, hidden 32, no fine-tuning, no local baseline):
    one plain, one with secure aggregation. Flower's deployment engine rather than its simulation
    engine: the same ClientApp and ledger, no Ray to start (which times out on a loaded machine), and
    the site runtime sees the FAB, so the ledger has its hash."""
    from fedmol.deploy.launcher import LocalSuperLink, LocalSuperNode, flwr_run
    from tests.server.synthetic import write_sites

    root = tmp_path_factory.mktemp("report-fed")
    stores = write_sites(root / "sites", 2, n=160, n_bits=1024)
    base = FederationConfig(num_server_rounds=2, min_sites=2, n_bits=1024, hidden="32", num_threads=1,
                            consortium_tasks="c1:classification,c2:classification", register_model=False,
                            experiment="report", finetune_epochs=0, local_baseline=False, eval_min_labels=2,
                            secagg_max_weight=1000.0)
    feds = {}
    with LocalSuperLink(root / "flower", simulation=False) as link:
        nodes = [LocalSuperNode(link, store, f"site{i}").start() for i, store in enumerate(stores)]
        try:
            for name, secure in (("plain", False), ("secure", True)):
                cfg = base.replace(secure_aggregation=secure, output_dir=str(root / name), run_name=name)
                lines: list[str] = []
                code = flwr_run(link, cfg.to_run_config(), on_line=lines.append, timeout=600)
                assert code == 0, "\n".join(lines[-40:])
                feds[name] = json.loads((root / name / "last_federation.json").read_text())["federation_id"]
        finally:
            for node in nodes:
                node.stop()
    from flwr.cli.build import build_fab_from_disk

    fab = build_fab_from_disk(root / "flower" / "app")  # the app flwr_run submitted (FABs build byte-identical)
    return {"store": stores[0], "feds": feds, "fab_hash": hashlib.sha256(fab).hexdigest()}


@pytest.mark.slow
def test_the_report_of_a_real_federation_is_the_ledgers(federated, tmp_path: Path) -> None:
    store, feds = Path(str(federated["store"])), dict(federated["feds"])  # type: ignore[call-overload]
    entries = read_ledger(store)
    assert {e["federation_id"] for e in entries} == set(feds.values())
    out = tmp_path / "report.md"
    assert main(["site", "report", str(store), "--out", str(out)]) == 0
    text = out.read_text()
    overview = {row[0]: row for row in _table(text, "federation")}
    for name, fid in feds.items():
        mine = [e for e in entries if e["federation_id"] == fid]
        secure = name == "secure"
        transport = "float32" if secure else "int8"  # the default, int8; SecAgg+ falls back to float32
        assert all(e["secure_aggregation"] is secure and e["transport"] == transport for e in mine)
        n = sum(e["bytes_total"] for e in mine)
        assert overview[fid][3:10] == [str(len({e["round"] for e in mine})), str(len(mine)), size(n), f"{n:,}",
                                       "yes" if secure else "no", transport, "no"]
        section = _section(text, f"What left the site: federation {fid}")
        rounds = {int(r[0]): r for r in _table(section, "round")}
        assert set(rounds) == {e["round"] for e in mine} and set(rounds) >= {1, 2}
        for rnd, row in rounds.items():
            sent = sum(e["bytes_total"] for e in mine if e["round"] == rnd)
            assert row[4] == f"{sent:,}" and row[6] == ("yes" if secure else "no")
        train = [e for e in mine if e["phase"] == "train"]
        # float32: at least the input layer; int8: at least its float32 scale per row (the int8 may be compressed)
        assert len(train) == 2 and all(e["bytes_total"] > 1024 * (32 if secure else 1) * 4 for e in train)
        arrays = _table(section, "array")
        assert [a[0] for a in arrays] == [a["name"] for a in train[0]["arrays"]]
        for a in arrays:
            sent_bytes = sum(x["bytes"] for e in train for x in e["arrays"] if x["name"] == a[0])
            dtypes = ", ".join(dict.fromkeys(x["dtype"] for e in train for x in e["arrays"] if x["name"] == a[0]))
            assert a[5] == f"{sent_bytes:,}" and a[2] == dtypes and a[3] == "1-2"
            assert dtypes == "float32" if secure or a[0].endswith("#int8-scale") else set(dtypes.split(", ")) <= {
                "int8", "uint8"}
        app = dict(_table(section, "app"))
        assert app["flwr"] == mine[0]["app"]["flwr"] and app["run config"] == mine[0]["app"]["run_config_sha256"]
        assert app["FAB hash"] == federated["fab_hash"] == mine[0]["app"]["fab_hash"]  # the site runtime saw it
        assert f"no per-compound DP in federation {fid}" in text
    assert len({e["app"]["run_config_sha256"] for e in entries}) == 2  # the two runs' configs differ
    assert "p_reg" not in text  # site-0's private task: only its label left
    assert f"no audit run yet: fedmol site audit {store}" in text
    # The site audits the secure federation's shared model (`fedmol site audit`), and the report has it.
    assert main(["site", "audit", str(store), "--federation", feds["secure"], "--lira-models", "2",
                 "--lira-epochs", "2"]) == 0
    (audit_path,) = (store / "privacy").glob("audit-*.json")
    audit = json.loads(audit_path.read_text())
    assert main(["site", "report", str(store), "--out", str(out)]) == 0
    section = _section(out.read_text(), "Membership-inference audit")
    assert f"Newest audit: {audit_path.name}" in section and f"federation {feds['secure']}" in section
    rows = {(r[0], r[1]): r[2:] for r in _table(section, "model")}
    for attack, a in audit["models"]["shared"]["attacks"].items():
        assert rows[("shared", attack)] == [f"{a['auc']:.3f}", f"{a['tpr_at_1pct_fpr']:.3f}",
                                            f"{a['tpr_at_0.1pct_fpr']:.3f}", f"{a['n_members']:,}",
                                            f"{a['n_nonmembers']:,}"]
    assert (tmp_path / f"report-audit-{audit['plot']}").read_bytes() == (store / "privacy" / audit["plot"]).read_bytes()
    page = tmp_path / "report.html"
    assert main(["site", "report", str(store), "--format", "html", "--out", str(page),
                 "--federation", feds["secure"]]) == 0
    html_text = page.read_text()
    assert feds["secure"] in html_text and feds["plain"] not in html_text


def test_the_final_evaluation_of_an_earlier_round_is_named(store: Path, capsys) -> None:
    site = SiteNode(store)
    site.record_outbox(RoundReply(None, {wire.VALID_LOSS: 0.4}, REPORT), phase="evaluate", server_round=1,
                       federation_id="plain")  # the server chose round 1 after round 1 was the last
    site.record_outbox(RoundReply(None, {wire.VALID_LOSS: 0.4}, REPORT), phase="evaluate", server_round=2,
                       federation_id="old")  # chose round 2 of 2 in "old"
    site.record_outbox(RoundReply(None, {wire.VALID_LOSS: 0.4}, REPORT), phase="evaluate", server_round=1,
                       federation_id="new")  # chose round 1 of 3 in "new"
    assert main(["site", "report", str(store)]) == 0
    text = capsys.readouterr().out
    new = {r[0]: r[1] for r in _table(_section(text, "What left the site: federation new"), "round")}
    assert new == {"1": "train, evaluate, evaluate (final)", "2": "train, evaluate", "3": "train, evaluate"}
    old = {r[0]: r[1] for r in _table(_section(text, "What left the site: federation old"), "round")}
    assert old["2"] == "train, evaluate, evaluate (final)"  # the last round chosen: its second evaluation


def test_ledger_full_shows_how_each_reply_left(store: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "300")
    assert main(["site", "ledger", str(store), "--full"]) == 0
    out = capsys.readouterr().out
    assert out.count("secure aggregation: yes; transport: float32") == 6  # federation "new"
    assert out.count("secure aggregation: no; transport: int8") == 2  # "plain"
    assert out.count("FAB " + "ab" * 32) == 6 and out.count("FAB not known to the site") == 2
    assert out.count("secure aggregation:") == 8  # "old" (4 replies) says nothing it does not know
