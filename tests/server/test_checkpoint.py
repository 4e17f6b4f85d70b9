import numpy as np
import pytest

from fedmol.errors import ConfigError
from fedmol.server.checkpoint import Checkpoint, resolve_resume


def test_checkpoint_round_trip_and_latest(tmp_path):
    arrays = {"trunk.w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    state = {"m_t/trunk.w": np.ones((2, 3))}
    Checkpoint("fed1", 3, mlflow_run_id="abc", reference_hash="r", sites=["a"], arrays=arrays,
               strategy_state=state).save(tmp_path)
    loaded = Checkpoint.load(resolve_resume("latest", tmp_path))
    assert (loaded.federation_id, loaded.server_round, loaded.mlflow_run_id, loaded.sites) == ("fed1", 3, "abc", ["a"])
    np.testing.assert_array_equal(loaded.arrays["trunk.w"], arrays["trunk.w"])
    np.testing.assert_array_equal(loaded.strategy_state["m_t/trunk.w"], state["m_t/trunk.w"])
    assert resolve_resume("fed1", tmp_path) == resolve_resume("latest", tmp_path)


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no checkpoint"):
        resolve_resume("latest", tmp_path)
    with pytest.raises(ConfigError, match="no checkpoint folder"):
        resolve_resume("nope", tmp_path)


def test_best_round_model_travels_with_the_checkpoint_and_old_ones_are_removed(tmp_path):
    arrays = {"trunk.w": np.full((2, 3), 4.0, np.float32)}
    best = {"trunk.w": np.full((2, 3), 2.0, np.float32)}
    selection = {"patience": 2, "scores": {"1": 0.6, "2": 0.8}, "best_round": 2, "best_score": 0.8, "stopped_at": None}
    Checkpoint("fed1", 2, arrays=arrays, selection=selection, best_arrays=best).save(tmp_path)
    folder = tmp_path / "checkpoints" / "fed1"
    assert (folder / "best-round-2.npz").exists()
    # The next round keeps the same best round: its file is not written again, and still loads.
    Checkpoint("fed1", 3, arrays=arrays, selection={**selection, "scores": {**selection["scores"], "3": 0.7}}).save(
        tmp_path)
    loaded = Checkpoint.load(folder)
    assert loaded.selection["best_round"] == 2 and loaded.selection["scores"]["3"] == 0.7
    np.testing.assert_array_equal(loaded.best_arrays["trunk.w"], best["trunk.w"])
    # A new best round replaces the old file.
    Checkpoint("fed1", 4, arrays=arrays, selection={**selection, "best_round": 4}, best_arrays=arrays).save(tmp_path)
    assert sorted(p.name for p in folder.glob("best-round-*")) == ["best-round-4.npz"]


def test_a_checkpoint_of_an_older_fedmol_loads_without_selection(tmp_path):
    import json

    Checkpoint("fed1", 1, arrays={"w": np.zeros(2)}).save(tmp_path)
    state = tmp_path / "checkpoints" / "fed1" / "state.json"
    meta = json.loads(state.read_text())
    state.write_text(json.dumps({k: v for k, v in meta.items() if k not in ("selection",)}))
    loaded = Checkpoint.load(tmp_path / "checkpoints" / "fed1")
    assert loaded.selection == {} and loaded.best_arrays is None


def test_checkpointer_writes_the_best_model_when_the_best_round_changes(tmp_path, monkeypatch):
    from fedmol.config import FederationConfig
    from fedmol.records import to_array_record
    from fedmol.server.rounds import RoundOutcome
    from fedmol.server.selection import BestRound
    from fedmol.server.tracking import Checkpointer

    class Strategy:  # what the checkpointer reads of a RoundBook
        evaluate_in_train = False
        expected_fingerprint = "ref"
        site_names = {1: "a"}
        inner = object()
        last_arrays = None

    written: list[str] = []
    real = Checkpoint.save
    monkeypatch.setattr(Checkpoint, "save", lambda self, root: written.append(self.best_file() if self.best_arrays
                                                                              else "-") or real(self, root))
    selection = BestRound()
    ckpt = Checkpointer(FederationConfig(output_dir=str(tmp_path)), "fed1", "run", selection=selection)
    strategy = Strategy()
    for rnd, score in enumerate([0.6, 0.8, 0.7, 0.9], start=1):
        strategy.last_arrays = to_array_record({"w": np.full(2, float(rnd), np.float32)})
        outcome = RoundOutcome(rnd, "evaluate", [], [], [], None, strategy.last_arrays)
        selection.observe(rnd, score, {"w": np.full(2, float(rnd), np.float32)})
        ckpt.on_round(outcome, strategy)
        ckpt.on_round(RoundOutcome(rnd, "evaluate", [], [], [], None, strategy.last_arrays, final=True), strategy)
    assert written == ["best-round-1.npz", "best-round-2.npz", "-", "best-round-4.npz"]  # never for the final
    loaded = Checkpoint.load(resolve_resume("latest", tmp_path))
    assert loaded.selection["scores"] == {"1": 0.6, "2": 0.8, "3": 0.7, "4": 0.9}
    np.testing.assert_array_equal(loaded.best_arrays["w"], 4.0)
    # A resumed run's checkpointer knows the best model is already on disk.
    again = BestRound()
    again.restore(loaded.selection, loaded.best_arrays)
    written.clear()
    Checkpointer(FederationConfig(output_dir=str(tmp_path)), "fed1", "run", selection=again).write(strategy, 4)
    assert written == ["-"]
