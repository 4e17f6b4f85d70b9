"""The SecAgg+ weight bound (`fedmol.server.secagg.WeightBound`, `SecureFedAvg.configure_fit`).

Each round, every sampled site's weight (its training labels) is divided by the workflow's
``max_weight``; a weight above it overflows the quantised sum. The server tightens the bound to
1.5x the largest *last known* weight of the round's sampled sites, and keeps the configured bound
while any sampled site has never reported a weight: a site absent from round 1 with a larger weight
must not overflow in round 2. No Flower process: Flower's own sampling, with hand-made proxies.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.common import Code, FitRes, Parameters, Status, ndarrays_to_parameters
from flwr.server.client_manager import SimpleClientManager
from flwr.server.client_proxy import ClientProxy

from fedmol import wire
from fedmol.config import FederationConfig
from fedmol.server.secagg import SecureFedAvg, WeightBound

CONFIGURED = 100_000.0


class _Proxy(ClientProxy):
    """A sampled node, as Flower's client manager hands it to ``configure_fit``."""

    def get_properties(self, *a, **k):  # pragma: no cover - never called
        raise NotImplementedError

    get_parameters = fit = evaluate = reconnect = get_properties


class _Workflow:  # what SecureFedAvg reads and writes of Flower's SecAggPlusWorkflow
    max_weight = CONFIGURED


def _strategy(nodes: list[int]) -> tuple[SecureFedAvg, SimpleClientManager, dict[int, ClientProxy]]:
    cfg = FederationConfig(secagg_max_weight=CONFIGURED, min_sites=1, fraction_train=1.0)
    strategy = SecureFedAvg(cfg, {"w": np.zeros(3, np.float32)}, [], federation_id="f")
    strategy.workflow = _Workflow()
    manager = SimpleClientManager()
    proxies = {}
    for n in nodes:
        proxies[n] = _Proxy(str(n))
        proxies[n].node_id = n
        manager.register(proxies[n])
    return strategy, manager, proxies


def _fit_result(proxy: ClientProxy, weight: int) -> tuple[ClientProxy, FitRes]:
    metrics = {wire.NUM_TRAIN_LABELS: float(weight), f"report.{wire.REP_SITE}": f"site{proxy.node_id}",
               f"report.{wire.REP_REFERENCE_HASH}": "ref"}
    return proxy, FitRes(Status(Code.OK, ""), ndarrays_to_parameters([np.ones(3, np.float32)]), weight, metrics)


def _bound_for_round(strategy: SecureFedAvg, manager: SimpleClientManager, rnd: int) -> float:
    sampled = strategy.configure_fit(rnd, Parameters([], ""), manager)
    assert sampled, "Flower's FedAvg sampled no node"
    return strategy.workflow.max_weight


def test_configured_bound_until_every_sampled_node_reported():
    bound = WeightBound(CONFIGURED)
    assert bound.for_nodes([1, 2]) == CONFIGURED
    bound.record(1, 100)
    assert bound.for_nodes([1, 2]) == CONFIGURED  # node 2 never reported
    bound.record(2, 200)
    assert bound.for_nodes([1, 2]) == 300.0
    assert bound.for_nodes([1]) == 150.0
    assert bound.for_nodes([]) == CONFIGURED


def test_a_node_keeps_its_last_weight_and_bad_weights_are_ignored():
    bound = WeightBound(CONFIGURED)
    bound.record(1, 100)
    bound.record(1, 40)  # its data shrank: the last weight counts, not the largest ever
    assert bound.for_nodes([1]) == 60.0
    for bad in (0, -5, float("nan"), float("inf")):
        bound.record(1, bad)
    assert bound.known == {1: 40.0}
    bound.record(2, 0.2)
    assert bound.for_nodes([2]) == 1.0  # never below 1


def test_the_bound_may_rise_above_the_configured_one_for_heavier_sites():
    bound = WeightBound(100.0)
    bound.record(1, 500)  # this site overflowed its first round; later rounds must not
    assert bound.for_nodes([1]) == 750.0


@pytest.mark.parametrize("configured, margin", [(0.0, 1.5), (-1.0, 1.5), (10.0, 0.9)])
def test_bad_settings_are_refused(configured, margin):
    with pytest.raises(ValueError, match="weight bound"):
        WeightBound(configured, margin)


def test_a_site_absent_from_round_one_gets_the_configured_bound():
    """Round 1: sites 1 and 2 answer (100 and 200 labels), site 3 (5,000 labels) is not there yet.
    Round 2 samples all three: the bound stays the configured one, not 1.5 x 200 = 300."""
    strategy, manager, proxies = _strategy([1, 2])
    assert _bound_for_round(strategy, manager, 1) == CONFIGURED
    strategy.aggregate_fit(1, [_fit_result(proxies[1], 100), _fit_result(proxies[2], 200)], [])
    assert _bound_for_round(strategy, manager, 2) == 300.0  # the same two sites: tightened

    late = _Proxy("3")
    late.node_id = 3
    manager.register(late)
    assert _bound_for_round(strategy, manager, 3) == CONFIGURED  # node 3 never reported: no overflow
    strategy.aggregate_fit(3, [_fit_result(proxies[1], 100), _fit_result(proxies[2], 200),
                               _fit_result(late, 5000)], [])
    assert _bound_for_round(strategy, manager, 4) == 7500.0  # covers the heaviest site, 5,000 labels


def test_a_site_missing_a_round_keeps_its_weight_in_the_bound():
    strategy, manager, proxies = _strategy([1, 2])
    strategy.aggregate_fit(1, [_fit_result(proxies[1], 100), _fit_result(proxies[2], 2000)], [])
    # round 2: node 2 failed (no result); its weight of 2,000 is still the one to cover in round 3
    strategy.aggregate_fit(2, [_fit_result(proxies[1], 100)], [(proxies[2], FitRes(Status(Code.OK, ""),
                                                                                   Parameters([], ""), 0, {}))])
    assert _bound_for_round(strategy, manager, 3) == 3000.0


def test_the_bound_uses_the_weight_secaggplus_divides_by():
    """Flower's secaggplus_mod divides FitRes.num_examples by the bound; the label count is the fallback."""
    strategy, manager, proxies = _strategy([1])
    proxy, res = _fit_result(proxies[1], 80)
    res.metrics[wire.NUM_TRAIN_LABELS] = 10.0
    strategy.aggregate_fit(1, [(proxy, res)], [])
    assert strategy.weight_bound.known == {1: 80.0}
