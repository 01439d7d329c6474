"""bench/autoscale_sim.py: its HPA is the documented algorithm with the shipped HPA's settings, and a
short replay runs and scales."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("autoscale_sim", REPO / "bench" / "autoscale_sim.py")
assert _spec and _spec.loader
sim = importlib.util.module_from_spec(_spec)
sys.modules["autoscale_sim"] = sim
_spec.loader.exec_module(sim)


@pytest.mark.parametrize(
    ("current", "metric", "target", "expected"),
    [
        (4, 16.0, 8.0, 8),  # ceil(4 * 16 / 8)
        (3, 10.0, 8.0, 4),  # ceil(3.75)
        (10, 8.7, 8.0, 10),  # ratio 1.0875: within the 0.1 tolerance
        (10, 7.3, 8.0, 10),  # ratio 0.9125: within
        (10, 7.1, 8.0, 9),  # ceil(8.875)
        (5, 0.0, 8.0, 0),  # min/max are applied by the controller, not the formula
    ],
)
def test_proposal_is_the_hpa_formula(current: int, metric: float, target: float, expected: int) -> None:
    assert sim.proposal(current, metric, target) == expected
    if abs(metric / target - 1) > 0.1:
        assert expected == math.ceil(current * metric / target)


def test_simulated_hpa_has_the_shipped_hpa_settings() -> None:
    hpa = yaml.safe_load((REPO / "deploy" / "k8s" / "base" / "hpa.yaml").read_text())["spec"]
    spec = sim.HpaSpec()
    assert (spec.min_replicas, spec.max_replicas) == (hpa["minReplicas"], hpa["maxReplicas"])
    targets = {m["pods"]["metric"]["name"]: m["pods"]["target"]["averageValue"] for m in hpa["metrics"]}
    assert spec.queue_target == float(targets["simpool_queue_depth"])
    assert spec.busy_target == float(targets["simpool_inference_busy"].removesuffix("m")) / 1000
    up, down = hpa["behavior"]["scaleUp"], hpa["behavior"]["scaleDown"]
    assert (spec.up_window_s, spec.down_window_s) == (
        up["stabilizationWindowSeconds"],
        down["stabilizationWindowSeconds"],
    )
    as_policies = {(p["type"], p["value"], p["periodSeconds"]) for p in up["policies"]}
    assert {(p.kind, p.value, p.period_s) for p in spec.up_policies} == as_policies
    assert {(p.kind, p.value, p.period_s) for p in spec.down_policies} == {
        (p["type"], p["value"], p["periodSeconds"]) for p in down["policies"]
    }


def test_rate_policies_and_stabilisation() -> None:
    hpa = sim.Hpa(sim.HpaSpec())
    # A queue 10x the target: the formula says 20, the policies allow max(ceil(2 * 4), 2 + 4) = 8.
    assert hpa.step(0.0, 2, 80.0, 0.0) == 8
    # Within the same 60 s period nothing more is allowed.
    assert hpa.step(15.0, 8, 80.0, 0.0) == 8
    # Load gone: the 300 s down window still holds the highest proposal.
    assert hpa.step(60.0, 8, 0.0, 0.0) == 8
    # Then at most 20 % a minute (the controller truncates: int(8 * 0.8) = 6), and no more that minute.
    assert hpa.step(400.0, 8, 0.0, 0.0) == 6
    assert hpa.step(415.0, 6, 0.0, 0.0) == 6
    assert hpa.step(475.0, 6, 0.0, 0.0) == 4


def test_a_short_step_replay_scales_up_and_answers() -> None:
    trace, dt = sim.step_trace(low=60, high=240, before_s=60, during_s=300, after_s=0)
    r = sim.simulate(trace, dt, sim.HpaSpec(), sim.SimConfig(dt=0.1, startup_s=30, initial_pods=2))
    assert r.ready[0] == 2 and 6 <= r.replicas.max() <= 16, "240 images/s needs >= 6 pods of 46.6"
    # The jump overruns two pods' queues until the new pods serve; after that nothing is refused.
    assert 0 < r.refused / r.offered < 0.15
    assert np.nanmax(r.p99[-4:]) < 0.5, "scaled out: latency back under the SLO"
    assert np.all(r.ready <= r.replicas)
