"""dp="site-dp-sgd" at a site: noise from its budget, the budget file, the ledger's dp entry, and
the refusal of a round that would exceed the budget."""

from __future__ import annotations

import json
import math

import pytest

from fedmol.client.site import SiteNode, dp_steps_per_round, node_dp_epsilon, site_for
from fedmol.config import FederationConfig
from fedmol.errors import ConfigError
from fedmol.privacy import EPSILON_SPENT, PrivacyBudgetExceeded, SiteBudget, dp_sgd_epsilon, noise_for_epsilon
from fedmol.server.federation import initial_shared_arrays
from tests.server.synthetic import write_sites


def _cfg(**kw) -> FederationConfig:
    base = dict(n_bits=256, dp_hidden="16", dropout=0.0, consortium_tasks="c1:classification",
                dp_num_server_rounds=2, dp_batch_size=32, eval_min_labels=5, num_threads=1, local_baseline=False,
                dp_local_epochs=1,
                dp="site-dp-sgd", dp_epsilon=4.0)
    return FederationConfig(**{"transport_dtype": "float32", **base, **kw})


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_sites(tmp_path_factory.mktemp("dp"), 1, n=200, n_bits=256)[0]


def _ledger(node: SiteNode) -> list[dict]:
    return [json.loads(line) for line in node.ledger_path.read_text().splitlines()]


def test_a_site_spends_its_budget_over_the_planned_rounds_and_refuses_one_more(store):
    node = SiteNode(store, "site0")
    cfg = _cfg()
    shared, _ = initial_shared_arrays(cfg)
    first = node.train_round(cfg, shared, server_round=1, federation_id="fa")
    budget = SiteBudget.load(node.budget_path("fa"))
    n_train = node.rows(cfg, "train").size
    steps = dp_steps_per_round(cfg, n_train)
    assert budget.sample_rate == pytest.approx(32 / n_train)
    assert [r["steps"] for r in budget.rounds] == [steps]
    assert budget.noise_multiplier > 0 and budget.max_grad_norm == cfg.dp_sample_clip
    # The epsilon sent and recorded is the accountant's for the steps taken, below the target.
    spent1 = first.metrics[EPSILON_SPENT]
    assert spent1 == pytest.approx(dp_sgd_epsilon(budget.noise_multiplier, budget.sample_rate, steps, 1e-5))
    assert 0 < spent1 < 4.0
    assert math.isnan(first.metrics["train-loss"])  # computed on the training compounds without noise: not sent
    second = node.train_round(cfg, first.arrays, server_round=2, federation_id="fa")
    spent2 = second.metrics[EPSILON_SPENT]
    assert spent1 < spent2 <= 4.0
    assert spent2 > 0.9 * 4.0  # the noise is the smallest that fits the plan: the budget is nearly used up
    data = json.loads(node.budget_path("fa").read_text())
    assert data["kind"] == "fedmol.site-dp" and data["version"] == 1 and data["federation_id"] == "fa"
    assert data["mechanism"] == "site-dp-sgd" and data["accountant"] == "pld"
    assert data["epsilon_spent"] == pytest.approx(spent2) and data["target_epsilon"] == 4.0
    assert [r["round"] for r in data["rounds"]] == [1, 2]
    # A third round (a federation run with more rounds than planned, or resumed past its plan) is refused.
    more = cfg.replace(dp_num_server_rounds=3)
    with pytest.raises(PrivacyBudgetExceeded, match=r"refuses round 3 .*budget is epsilon 4 at delta 1e-05"):
        node.train_round(more, second.arrays, server_round=3, federation_id="fa")
    assert len(SiteBudget.load(node.budget_path("fa")).rounds) == 2  # nothing trained, nothing spent
    # The ledger's train entries say what was spent; evaluate entries carry no dp key.
    train_entries = [e for e in _ledger(node) if e["federation_id"] == "fa" and e["phase"] == "train"]
    assert [e["dp"] for e in train_entries] == [
        {"mechanism": "site-dp-sgd", "epsilon_spent": pytest.approx(s), "target_epsilon": 4.0, "delta": 1e-5}
        for s in (spent1, spent2)]
    assert all(EPSILON_SPENT in e["metric_names"] for e in train_entries)


def test_site_dp_trains_with_its_own_recipe_full_batch_by_default(store):
    """Without dp-* settings a DP site takes the DP recipe (fedmol.config): every training compound in
    each step (q = 1), dp-local-epochs steps a round, the noise planned for all of them, and the shared
    model of dp-hidden (32) whatever hidden, batch-size and local-epochs say."""
    node = SiteNode(store, "site0")
    cfg = FederationConfig(n_bits=256, consortium_tasks="c1:classification", num_server_rounds=2, eval_min_labels=5,
                           num_threads=1, local_baseline=False, transport_dtype="float32", dp="site-dp-sgd",
                           dp_epsilon=8.0, hidden="400", batch_size=128, local_epochs=2)
    recipe = (cfg.dp_hidden, cfg.dp_batch_size, cfg.dp_local_epochs, cfg.dp_lr, cfg.dp_sample_clip)
    assert recipe == ("32", 0, 3, 4.0, 1.0)
    assert (cfg.dp_num_server_rounds, cfg.max_rounds) == (20, 20)  # the DP recipe's rounds, not num-server-rounds
    shared, _ = initial_shared_arrays(cfg)
    reply = node.train_round(cfg, shared, server_round=1, federation_id="fdefault")
    assert reply.arrays is not None and reply.arrays["trunk.input.bag.weight"].shape == (256, 32)
    budget = SiteBudget.load(node.budget_path("fdefault"))
    n_train = node.rows(cfg, "train").size
    assert budget.sample_rate == 1.0 and dp_steps_per_round(cfg, n_train) == 3
    assert [r["steps"] for r in budget.rounds] == [3] and budget.max_grad_norm == 1.0
    # The noise is planned for dp-num-server-rounds (20) rounds of 3 full-batch steps.
    assert budget.noise_multiplier == pytest.approx(noise_for_epsilon(8.0, 1e-5, 1.0, 20 * 3), rel=1e-3)
    # Outside site-dp-sgd the dp-* keys do nothing: the model is hidden's.
    assert initial_shared_arrays(cfg.replace(dp="off", dp_epsilon=0.0))[0]["trunk.input.bag.weight"].shape == (256, 400)


def test_without_dp_the_ledger_says_so_and_no_budget_file_is_written(store):
    node = SiteNode(store, "site0")
    cfg = _cfg(dp="off", dp_epsilon=0.0)
    shared, _ = initial_shared_arrays(cfg)
    reply = node.train_round(cfg, shared, server_round=1, federation_id="fb")
    assert EPSILON_SPENT not in reply.metrics and math.isfinite(reply.metrics["train-loss"])
    assert not node.budget_path("fb").exists()
    assert [e["dp"] for e in _ledger(node) if e["federation_id"] == "fb"] == [None]


def test_a_site_may_set_a_stricter_budget_of_its_own(store):
    cfg = _cfg(sim_store_dir=str(store.parent))
    node = site_for({"partition-id": 0, "dp-epsilon": "1.0"}, cfg)
    assert node.dp_epsilon == 1.0
    shared, _ = initial_shared_arrays(cfg)
    node.train_round(cfg, shared, server_round=1, federation_id="fc")
    budget = SiteBudget.load(node.budget_path("fc"))
    assert budget.target_epsilon == 1.0 and budget.epsilon_spent <= 1.0
    loose = site_for({"partition-id": 0, "dp-epsilon": "100"}, cfg)  # a looser one: the run config's wins
    loose.train_round(cfg, shared, server_round=1, federation_id="fd")
    assert SiteBudget.load(loose.budget_path("fd")).target_epsilon == 4.0
    with pytest.raises(ConfigError, match="node config dp-epsilon"):
        node_dp_epsilon({"dp-epsilon": "lots"})


def test_a_resumed_federation_with_other_dp_settings_is_refused(store):
    node = SiteNode(store, "site0")
    cfg = _cfg()
    shared, _ = initial_shared_arrays(cfg)
    node.train_round(cfg, shared, server_round=1, federation_id="fe")
    with pytest.raises(ConfigError, match="dp-sample-clip 1.0 -> 2.0"):
        node.train_round(cfg.replace(dp_sample_clip=2.0), shared, server_round=2, federation_id="fe")


@pytest.mark.slow
def test_site_dp_with_secure_aggregation_in_a_federation(tmp_path):
    """Per-compound DP at the sites and SecAgg+ on the sum, together: 2 sites, 2 rounds, on Flower's
    deployment engine (two SuperNodes with their site runtimes; no Ray to start on a loaded machine)."""
    from mlflow.tracking import MlflowClient

    from fedmol.deploy.launcher import LocalSuperLink, LocalSuperNode, flwr_run

    stores = write_sites(tmp_path / "sites", 2, n=160, n_bits=1024)
    # dp-num-server-rounds, not num-server-rounds (40 by default), is what the server runs under site DP.
    cfg = FederationConfig(dp_num_server_rounds=2, min_sites=2, n_bits=1024, hidden="32", num_threads=1,
                           consortium_tasks="c1:classification,c2:classification", register_model=False,
                           experiment="site-dp", finetune_epochs=0, local_baseline=False, eval_min_labels=2,
                           secagg_max_weight=1000.0, secure_aggregation=True, dp="site-dp-sgd", dp_epsilon=8.0,
                           output_dir=str(tmp_path / "server"))
    lines: list[str] = []
    with LocalSuperLink(tmp_path / "flower", simulation=False) as link:
        nodes = [LocalSuperNode(link, store, f"site{i}").start() for i, store in enumerate(stores)]
        try:
            code = flwr_run(link, cfg.to_run_config(), on_line=lines.append, timeout=600)
        finally:
            for node in nodes:
                node.stop()
    assert code == 0, "\n".join(lines[-40:])
    assert sum("Secure aggregation completed" in line for line in lines) == 2
    outputs = json.loads((tmp_path / "server" / "last_federation.json").read_text())
    run = MlflowClient(outputs["tracking_uri"]).get_run(outputs["mlflow_run_id"])
    assert run.data.tags["fedmol.dp"] == "site-dp-sgd" and run.data.tags["fedmol.dp-target-epsilon"] == "8"
    spent = {}
    for i in range(2):
        node = SiteNode(stores[i], f"site{i}")
        budget = SiteBudget.load(node.budget_path(outputs["federation_id"]))
        assert [r["round"] for r in budget.rounds] == [1, 2] and budget.epsilon_spent <= 8.0
        spent[f"site{i}"] = budget.epsilon_spent
        assert run.data.metrics[f"site/site{i}/dp/epsilon-spent"] == pytest.approx(budget.epsilon_spent)
        dp_entries = [e["dp"] for e in _ledger(node) if e["phase"] == "train"]
        assert [d["epsilon_spent"] for d in dp_entries] == [pytest.approx(r["epsilon_spent"]) for r in budget.rounds]
    assert run.data.metrics["dp/epsilon-spent"] == pytest.approx(max(spent.values()))
