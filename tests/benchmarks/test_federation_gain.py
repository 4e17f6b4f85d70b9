"""The federation-gain benchmark without running it: every set runs the defaults, the sets' data facts
match their files, and the targets, means and pair counts come out of a gain table as issue #12 says."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import pytest

from benchmarks.common import DATA_DIR
from benchmarks.federation_gain import combine, judge
from benchmarks.gain_report import approach_means, pair_stats, write_results
from benchmarks.sets import EVAL_MIN_LABELS, FEATURES, QUICK_HIDDEN, RUN_KEYS, SETS, changed_keys, federation_config
from fedmol.config import FederationConfig
from fedmol.models.report import GainTable


@pytest.mark.parametrize("name", sorted(SETS))
@pytest.mark.parametrize("quick", [False, True])
def test_every_set_runs_the_defaults(name: str, quick: bool, tmp_path: Path) -> None:
    cfg = federation_config(name, SETS[name]["sites"], tmp_path / "sites", tmp_path / "server", quick=quick, seed=2,
                            experiment="e", run_name="r")
    changed = changed_keys(cfg)
    allowed = set(RUN_KEYS) | ({"num-server-rounds", "hidden"} if quick else set())
    assert set(changed) <= allowed, f"{name}: recipe keys set per set: {sorted(set(changed) - allowed)}"
    assert (cfg.seed, cfg.eval_min_labels, cfg.num_threads, cfg.report_task_names, cfg.register_model) == (
        2, EVAL_MIN_LABELS, 1, True, False)
    assert cfg.n_bits == FEATURES["n_bits"]  # the stores are prepared at the defaults' width
    default = FederationConfig()
    if quick:
        assert cfg.hidden == QUICK_HIDDEN and cfg.num_server_rounds <= default.num_server_rounds
    else:
        assert (cfg.hidden, cfg.num_server_rounds, cfg.lr, cfg.strategy) == (
            default.hidden, default.num_server_rounds, default.lr, default.strategy)


@pytest.mark.parametrize("name", sorted(SETS))
def test_each_sets_file_has_its_columns(name: str) -> None:
    spec = SETS[name]
    path = DATA_DIR / spec["file"]
    if not path.exists():
        pytest.skip(f"the benchmarks' public data sets are not at {DATA_DIR} (set $FEDMOL_BENCH_DATA)")
    with gzip.open(path, "rt") as fh:
        header = fh.readline().strip().split(",")
    assert "smiles" in header
    assert spec["id_col"] is None or spec["id_col"] in header
    consortium = [t.split(":")[0] for t in spec["consortium"].split(",") if t]
    assert set(consortium) <= set(header)
    assert spec["split"] in ("by_scaffold", "by_task") and spec["sites"] >= 2
    assert spec["quick"]["nrows"] > 0 and spec["quick"]["num_server_rounds"] >= 1


def _table(name: str, local: float, federated: float, pooled: float, personal: float | None = None) -> GainTable:
    """Two sites of two tasks; site-1 kept a personalised model when ``personal`` is given."""
    t = GainTable(name, "score")
    for site in ("site-0", "site-1"):
        t.add("local", site, {"a": local, "b": local + 0.02})
        t.add("federated", site, {"a": federated, "b": local + 0.01})  # task b: federated loses
        t.add("pooled", site, {"a": pooled, "b": pooled})
    if personal is not None:
        t.add("personalised", "site-1", {"a": personal, "b": personal})
    return t


def test_site_model_is_personalised_where_chosen_else_federated() -> None:
    t = _table("chembl_5thresh", local=0.20, federated=0.30, pooled=0.25, personal=0.40)
    m = approach_means(t)
    assert m["federated"] == pytest.approx((0.30 + 0.21) / 2)
    assert m["site model"] == pytest.approx(((0.30 + 0.21) / 2 + 0.40) / 2)  # site-0 federated, site-1 personalised
    p = pair_stats(t)
    assert (p["federated"]["won"], p["federated"]["pairs"]) == (2, 4)
    assert (p["site model"]["won"], p["site model"]["pairs"]) == (3, 4)  # site-0's federated loses task b
    assert judge("chembl_5thresh", m, p) == {"site model >= local-only + 0.01": True,
                                             "site model better on >= 60% of pairs": True}
    assert judge("chembl_5thresh", m, {**p, "site model": p["federated"]})[
        "site model better on >= 60% of pairs"] is False  # 50 %: below 60 %


def test_tox21_targets_judge_the_plain_federated_model_against_pooled_and_local() -> None:
    ok = _table("tox21", local=0.70, federated=0.77, pooled=0.76)
    m = approach_means(ok)  # federated (0.77 + 0.71) / 2 = 0.74, local 0.71, pooled 0.76
    assert judge("tox21", m, pair_stats(ok)) == {"federated >= 0.99 x pooled": False,
                                                 "federated >= local-only + 0.025": True}
    close = _table("tox21", local=0.70, federated=0.80, pooled=0.76)
    m = approach_means(close)  # federated 0.755 >= 0.99 x pooled 0.76 = 0.7524
    assert judge("tox21", m, pair_stats(close))["federated >= 0.99 x pooled"] is True
    # a personalised model does not count for Tox21's federated target
    personal = _table("tox21", local=0.70, federated=0.70, pooled=0.76, personal=0.99)
    assert judge("tox21", approach_means(personal), pair_stats(personal))["federated >= local-only + 0.025"] is False


def test_seeds_are_judged_on_the_mean_and_the_summed_pairs(tmp_path: Path) -> None:
    runs = []
    for seed, federated in ((0, 0.70), (1, 0.66)):  # sider: above local at seed 0, below at seed 1
        t = _table("sider", local=0.68, federated=federated, pooled=0.70)
        means, pairs = approach_means(t), pair_stats(t)
        runs.append({"set": "sider", "seed": seed, "file": "sider.csv.gz", "metric": "ROC-AUC", "quick": False,
                     "means": means, "pairs": pairs, "targets": judge("sider", means, pairs),
                     "seconds": {"total": 60.0, "prepare": 1.0, "pooled": 2.0, "federation": 50.0},
                     "run_config": FederationConfig().to_run_config(), "changed_from_defaults": {"seed": seed},
                     "table": t.to_dict(), "_table": t})
    assert runs[0]["targets"]["site model >= local-only"] and not runs[1]["targets"]["site model >= local-only"]
    both = combine(runs)
    assert both["means"]["site model"] == pytest.approx((runs[0]["means"]["site model"]
                                                         + runs[1]["means"]["site model"]) / 2)
    assert both["pairs"]["site model"]["pairs"] == 8 and both["pairs"]["site model"]["won"] == 2
    assert both["targets"] == {"site model >= local-only": False, "site model better on a majority of pairs": False}
    assert set(both["per_seed"]) == {"0", "1"} and both["seconds"]["total"] == 120.0
    write_results([both], tmp_path, quick=False, command="test", total=120.0, code="abc")
    md = (tmp_path / "federation_gain.md").read_text()
    assert "sider: site model >= local-only: **NOT met** (per seed: 0 met, 1 not met)" in md
    assert "| sider, mean of seeds 0, 1 | ROC-AUC |" in md and (tmp_path / "federation_gain.png").exists()
    assert math.isfinite(both["means"]["pooled"])
