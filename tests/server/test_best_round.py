"""Best-round selection and early stopping in a real federation (Flower's simulation engine).

Two small synthetic sites whose training folds have 35 % of their labels flipped: with 5 local
epochs of SGD at lr 0.3 the shared model learns for a few rounds, then overfits the noise, so the
federated validation score rises and then falls. Every setting that shapes that curve is given here
(not taken from the defaults). One federation runs all 6 rounds (patience 0) and registers its
model; the other may run 8 but has patience 2.

The assertions rest on what the server recorded per round (MLflow), on what the sites wrote
(their outboxes) and on an evaluation of the saved model redone here, at the sites' validation
folds: not on the server's own choice.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedmol.config import FederationConfig
from fedmol.deploy.launcher import LocalSuperLink, flwr_run
from tests.server.synthetic import synthetic_store

pytestmark = pytest.mark.slow

TASKS = [("c1", "classification"), ("c2", "classification")]
N_SITES, ROWS, N_BITS, FLIP = 2, 300, 256, 0.35
RECIPE = dict(
    n_bits=N_BITS, hidden="64", dropout=0.2, input_transform="binary",
    consortium_tasks="c1:classification,c2:classification", strategy="fedavg", optimizer="sgd", lr=0.3,
    lr_decay=1.0, momentum=0.9, weight_decay=0.0, local_epochs=5, local_steps=0, batch_size=128,
    keep_optimizer_state=False, head_epochs=0, finetune_epochs=0, eval_min_labels=5, local_baseline=False,
    evaluate_in_train=True, num_threads=1, min_sites=N_SITES, seed=0, test_fold=0, valid_fold=1, device="cpu",
    fraction_train=1.0, dp="off", secure_aggregation=False, transport_dtype="float32",
)


def noisy_sites(root: Path) -> list[Path]:
    """Synthetic stores whose training folds (not validation, not test) have FLIP of labels flipped."""
    paths = []
    for i in range(N_SITES):
        store = synthetic_store(ROWS, N_BITS, TASKS, seed=i, site_name=f"site{i}")
        rng = np.random.default_rng(100 + i)
        train = ~np.isin(store.folds, [RECIPE["test_fold"], RECIPE["valid_fold"]])
        flip = (rng.random(store.Y.shape) < FLIP) & train[:, None] & ~np.isnan(store.Y)
        store.Y[flip] = 1.0 - store.Y[flip]
        paths.append(store.save(root / f"site-{i}"))
    return paths


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("best-round")
    stores = noisy_sites(root / "sites")
    base = FederationConfig(**RECIPE, sim_store_dir=str(root / "sites"), experiment="best-round")
    configs = {
        "all": base.replace(num_server_rounds=6, patience=0, output_dir=str(root / "all"), register_model=True,
                            model_name="fedmol-best-round"),
        "patience": base.replace(num_server_rounds=8, patience=2, output_dir=str(root / "patience"),
                                 register_model=False),
    }
    sim = {"num-supernodes": N_SITES, "client-resources-num-cpus": 1}
    out = {}
    with LocalSuperLink(root / "flower") as link:
        for name, cfg in configs.items():
            cfg.validate()
            lines: list[str] = []
            code = flwr_run(link, cfg.to_run_config(), federation_config=sim, on_line=lines.append, timeout=900)
            assert code == 0, "\n".join(lines[-60:])
            outputs = json.loads((Path(cfg.output_dir) / "last_federation.json").read_text())
            client = MlflowClient(outputs["tracking_uri"])

            def history(key: str, client=client, run_id=outputs["mlflow_run_id"]) -> dict[int, float]:
                return {m.step: m.value for m in client.get_metric_history(run_id, key)}

            out[name] = {"cfg": cfg, "outputs": outputs, "history": history, "client": client,
                         "tags": client.get_run(outputs["mlflow_run_id"]).data.tags, "log": lines}
    out["stores"] = stores
    return out


def first_best(scores: dict[int, float]) -> int:
    top = max(scores.values())
    return min(r for r, s in scores.items() if s == top)


def shared_arrays(model_dir: Path) -> dict[str, np.ndarray]:
    from fedmol.models.io import load_model

    model, _ = load_model(model_dir)
    return {k: v.detach().cpu().numpy() for k, v in model.shared_state_dict().items()}


def federated_score_here(cfg: FederationConfig, stores: list[Path], arrays: dict[str, np.ndarray]) -> float:
    """The label-weighted validation score of ``arrays``, computed again at the sites' stores."""
    from fedmol.client.site import SiteNode

    total = labels = 0.0
    for i, path in enumerate(stores):
        reply = SiteNode(path, f"site{i}").evaluate_round(cfg, arrays, server_round=1, federation_id="recheck",
                                                          final=False)
        summary = json.loads(reply.report["summary"])
        total += summary["valid_score"] * summary["valid_n_labels"]
        labels += summary["valid_n_labels"]
    return total / labels


def test_the_registered_model_is_the_best_validation_round_not_the_last(runs, tmp_path):
    import mlflow

    run = runs["all"]
    scores = run["history"]("federated-valid-score")
    assert sorted(scores) == [1, 2, 3, 4, 5, 6], scores
    best = first_best(scores)
    # Not vacuous: validation got worse after the best round, and the last round is not the best.
    assert best < 6 and scores[6] < scores[best] - 0.005, scores
    outputs, tags = run["outputs"], run["tags"]
    assert outputs["best_round"] == best and outputs["rounds_run"] == 6
    assert tags["fedmol.best-round"] == str(best) and tags["fedmol.rounds-run"] == "6"
    assert tags["fedmol.stop-reason"] == (f"best federated validation score {scores[best]:.4f} at round {best}; "
                                          "ran all 6 rounds")
    model_dir = Path(outputs["model_dir"])
    meta = json.loads((model_dir / "meta.json").read_text())
    assert (meta["best_round"], meta["rounds_run"], meta["max_rounds"]) == (best, 6, 6)
    assert meta["best_valid_score"] == pytest.approx(scores[best])
    # The registered model is the saved one ...
    mlflow.set_tracking_uri(outputs["tracking_uri"])
    registered = Path(mlflow.artifacts.download_artifacts(outputs["model_uri"], dst_path=str(tmp_path)))
    saved = shared_arrays(model_dir)
    for name, value in shared_arrays(registered / "artifacts" / "model").items():
        np.testing.assert_array_equal(value, saved[name], err_msg=name)
    # ... it is not the last round's model (the checkpoint's global model) ...
    ckpt = Path(run["cfg"].output_dir) / "checkpoints" / outputs["federation_id"]
    assert json.loads((ckpt / "state.json").read_text())["server_round"] == 6
    with np.load(ckpt / "global.npz") as last:
        assert any(not np.array_equal(last[k], saved[k]) for k in saved)
    # ... and scored again at the sites' validation folds it gets the best round's score.
    again = federated_score_here(run["cfg"], runs["stores"], saved)
    assert again == pytest.approx(scores[best], abs=1e-4)
    # The final evaluation ran once, on that model (no fine-tuning here: the same score again).
    assert run["history"]("final/federated-valid-score") == pytest.approx({best: scores[best]}, abs=1e-6)


def test_patience_stops_the_federation_after_that_many_rounds_without_improvement(runs):
    run = runs["patience"]
    scores = run["history"]("federated-valid-score")
    best = first_best(scores)
    stopped = best + 2
    assert stopped < 8, f"no early stop to test: best round {best} of 8 ({scores})"
    assert sorted(scores) == list(range(1, stopped + 1)), scores  # no round evaluated after the stop
    assert all(scores[r] <= scores[best] for r in (best + 1, best + 2))
    # The same sites and settings as the run of all rounds: the same curve up to the stop.
    common = runs["all"]["history"]("federated-valid-score")
    for r in scores:
        if r in common:
            assert scores[r] == pytest.approx(common[r], abs=1e-3), (r, scores, common)
    tags, outputs = run["tags"], run["outputs"]
    assert tags["fedmol.stop-reason"] == (
        f"best federated validation score {scores[best]:.4f} at round {best}; stopped at round {stopped} after "
        f"2 rounds without improvement (patience 2); round {stopped + 1}'s training, which carried that "
        "evaluation, was discarded")
    assert outputs["best_round"] == best and outputs["rounds_run"] == stopped
    # The sites trained the round that carried round `stopped`'s evaluation, and nothing after it;
    # the server never aggregated that round.
    for path in runs["stores"]:
        entries = [json.loads(x) for x in (path / "outbox.jsonl").read_text().splitlines()]
        fed = [e for e in entries if e["federation_id"] == outputs["federation_id"]]
        assert max(e["round"] for e in fed if e["phase"] == "train") == stopped + 1
    assert sorted(run["history"]("train/train-loss")) == list(range(1, stopped + 1))
    # The final evaluation, once, of the best round's model.
    assert run["history"]("final/federated-valid-score") == pytest.approx({best: scores[best]}, abs=1e-6)
    meta = json.loads((Path(outputs["model_dir"]) / "meta.json").read_text())
    assert (meta["best_round"], meta["rounds_run"], meta["max_rounds"]) == (best, stopped, 8)
    again = federated_score_here(run["cfg"], runs["stores"], shared_arrays(Path(outputs["model_dir"])))
    assert again == pytest.approx(scores[best], abs=1e-4)
