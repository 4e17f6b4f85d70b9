from __future__ import annotations

import math

from fedmol.config import FederationConfig
from fedmol.models.baselines import federation_recipe, train_baselines
from fedmol.models.report import GainTable
from tests.server.synthetic import write_sites


def test_local_and_pooled_baselines_score_every_site_on_test_and_validation(tmp_path):
    paths = write_sites(tmp_path, n_sites=2, n=200, n_bits=256)
    cfg = FederationConfig(n_bits=256, hidden="16", consortium_tasks="c1:classification,c2:classification",
                           eval_min_labels=5, device="cpu")
    validation = GainTable("synthetic", "score")
    seen: list[str] = []
    table = train_baselines({"site0": paths[0], "site1": paths[1]}, cfg, epochs=2, on_model=seen.append,
                            validation=validation)
    assert seen == ["local:site0", "local:site1", "pooled"]
    for t in (table, validation):
        assert set(t.approaches) == {"local", "pooled"}
        assert set(t.sites) == {"site0", "site1"}
        assert all(math.isfinite(t.site_mean(a, s)) for a in ("local", "pooled") for s in ("site0", "site1"))
    # eval-min-labels decides which tasks are scored: above every fold's count, none is.
    strict = train_baselines({"site0": paths[0]}, cfg.replace(eval_min_labels=10_000), epochs=1)
    assert strict.common_tasks("site0") == []


def test_federation_recipe_follows_the_run_config():
    cfg = FederationConfig(num_server_rounds=4, local_epochs=2, optimizer="adam", lr=0.02, lr_decay=0.5)
    tc = federation_recipe(cfg, monitor="score")
    assert (tc.epochs, tc.optimizer, tc.lr, tc.lr_step_epoch, tc.lr_gamma, tc.monitor) == (8, "adam", 0.02, 2, 0.5,
                                                                                           "score")


def test_local_only_keeps_the_recipe_better_on_the_validation_fold(tmp_path):
    from fedmol.datasets.store import SiteStore
    from fedmol.models.baselines import adam_recipe, local_only
    from fedmol.models.training import TrainConfig

    store = SiteStore.load(write_sites(tmp_path, n_sites=1, n=200, n_bits=128)[0])
    cfg = FederationConfig(n_bits=128, hidden="16", consortium_tasks="c1:classification", eval_min_labels=5,
                           device="cpu", num_threads=1)
    untrained = TrainConfig(epochs=0, seed=cfg.seed)  # the initial weights: a poor model
    res = local_only(store, cfg, recipes={"untrained": untrained, "adam": adam_recipe(cfg, epochs=8)})
    assert res.recipe == "adam" and res.validation["adam"] > res.validation["untrained"]
    assert res.results["valid"].score == res.validation["adam"] and res.model is not None
    assert set(res.results["test"].per_task) == {"c1", "c2", "p_reg"}  # the site's model shape


def test_baselines_with_recipe_selection_say_which_recipe_each_model_kept(tmp_path):
    paths = write_sites(tmp_path, n_sites=2, n=120, n_bits=64)
    cfg = FederationConfig(n_bits=64, hidden="8", consortium_tasks="c1:classification", eval_min_labels=5,
                           device="cpu", num_threads=1, num_server_rounds=2, local_epochs=1)
    table = train_baselines({"site0": paths[0], "site1": paths[1]}, cfg, epochs=2, select=True)
    note = table.notes["baseline recipes (chosen on the validation fold)"]
    assert all(f"{m}: " in note for m in ("local:site0", "local:site1", "pooled"))
    assert set(table.approaches) == {"local", "pooled"}


def test_pooled_only_baselines_train_no_local_only_model(tmp_path):
    paths = write_sites(tmp_path, n_sites=2, n=120, n_bits=64)
    cfg = FederationConfig(n_bits=64, hidden="8", consortium_tasks="c1:classification", eval_min_labels=5,
                           device="cpu", num_threads=1, num_server_rounds=2, local_epochs=1)
    seen: list[str] = []
    table = train_baselines({"site0": paths[0], "site1": paths[1]}, cfg, epochs=2, select=True, local=False,
                            on_model=seen.append)
    assert seen == ["pooled"] and table.approaches == ["pooled"] and set(table.sites) == {"site0", "site1"}
    assert "local:" not in table.notes["baseline recipes (chosen on the validation fold)"]
