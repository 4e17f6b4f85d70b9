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
