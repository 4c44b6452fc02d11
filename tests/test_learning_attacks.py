"""The omniscient colluding attacks of issue 14: each does what its paper says."""

import numpy as np
import pytest
import torch

from learning.attacks import (
    AgrMinMax,
    AgrMinSum,
    CmflCapture,
    CmflCaptureStaggered,
    FangKrum,
    InnerProduct,
    Mimic,
    RoundView,
    committee_score,
    make_attack,
)
from learning.baselines import krum_scores

RNG = np.random.default_rng(0)


def _view(n_honest: int = 8, dim: int = 12, committee: tuple[str, ...] = ()) -> RoundView:
    g = torch.Generator().manual_seed(3)
    base = {"w": torch.zeros(dim)}
    honest = {f"h{i}": {"w": 1.0 + torch.randn(dim, generator=g)} for i in range(n_honest)}
    colluders = {f"x{i}": {"w": torch.randn(dim, generator=g)} for i in range(3)}
    return RoundView(base, honest, colluders, committee)


def _sent(attack, view: RoundView, who: str = "x0") -> torch.Tensor:
    return attack.observe_round(view).poison_update(view.base, view.colluders[who], RNG)["w"]


def test_without_a_view_an_omniscient_attack_sends_its_training():
    own = {"w": torch.ones(3)}
    assert make_attack("min_max").poison_update({"w": torch.zeros(3)}, own, RNG) is own
    assert make_attack("min_max").observe([own], 20, 6).poison_update(
        {"w": torch.zeros(3)}, own, RNG) is own


def test_min_max_and_min_sum_stay_inside_the_honest_spread_as_far_out_as_they_can():
    view = _view()
    d = torch.stack([view.honest[p]["w"] for p in sorted(view.honest)])
    mal = _sent(AgrMinMax(), view)
    assert (d - mal).norm(dim=1).max() <= torch.cdist(d, d).max() + 1e-6
    assert (mal - d.mean(dim=0)).norm() > 0.5  # it did move away from the mean
    mal = _sent(AgrMinSum(), view)
    assert ((d - mal).norm(dim=1) ** 2).sum() <= (torch.cdist(d, d) ** 2).sum(dim=1).max() + 1e-6


def test_ipm_mimic_and_fang_krum():
    view = _view()
    d = torch.stack([view.honest[p]["w"] for p in sorted(view.honest)])
    assert torch.allclose(_sent(InnerProduct(epsilon=0.5), view), -0.5 * d.mean(dim=0))
    assert torch.equal(_sent(Mimic(), view), view.honest["h0"]["w"])
    mal = _sent(FangKrum(), view)
    vectors = list(d.double()) + [mal.double()] * 3
    scores = krum_scores(vectors, 3)
    assert min(range(len(vectors)), key=lambda i: (scores[i], i)) >= len(d)  # Krum picks it
    assert torch.all(torch.sign(mal) == -torch.sign(d.mean(dim=0)))


def test_cmfl_capture_scores_below_every_honest_trainer_and_staggered_copies_differ():
    view = _view(committee=("h0", "h1", "h2", "x1", "x2"))
    colluders = set(view.colluders)
    honest = [committee_score(view, view.honest[t]["w"].double(), colluders)
              for t in view.honest_trainers]
    mal = _sent(CmflCapture(), view).double()
    assert committee_score(view, mal, colluders) <= min(honest)
    assert (mal - torch.stack([view.honest[p]["w"] for p in view.honest]).mean(0)).norm() > 0.1
    a, b = (_sent(CmflCaptureStaggered(), view, w).double() for w in ("x0", "x1"))
    assert committee_score(view, b, colluders) > committee_score(view, a, colluders)


def test_omniscient_members_report_colluders_closest_and_keep_the_honest_ranking():
    lied = make_attack("min_max").poison_scores({"h": 2.0, "k": 1.0, "x": 5.0}, {"x"})
    assert lied == {"h": 2.0, "k": 1.0, "x": 0.0}


@pytest.mark.parametrize("name", ["min_max", "ipm", "fang_median", "cmfl_capture", "mimic"])
def test_every_adaptive_attack_runs_in_the_harness(name):
    from learning.simulation import RunSpec, run

    res = run(RunSpec(rule="cmfl-auto", attack=name, fraction=0.25, n_peers=8,
                      committee_size=3, rounds=2, epochs=1))
    assert len(res.accuracy) == 2
