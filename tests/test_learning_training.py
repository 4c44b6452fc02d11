"""Data sharding, FedAvg convergence and attack behaviour."""

import numpy as np
import pytest
import torch

from learning.aggregation import aggregate_weighted
from learning.attacks import (
    ATTACKS,
    CLASSIC_ATTACKS,
    ALittleIsEnough,
    FalseScores,
    GaussianNoise,
    LabelFlip,
    Scaling,
    SignFlip,
    Zeros,
    alie_z,
    make_attack,
)
from learning.data import load_digits_split, shard
from learning.model import ModelSpec, initial_state
from learning.training import evaluate, train_local

SPEC = ModelSpec()


@pytest.fixture(scope="module")
def split():
    return load_digits_split(seed=0)


def test_split_shapes_and_scaling(split):
    train, test = split
    assert len(train) + len(test) == 1797 and len(test) == 360
    assert train.x.dtype == torch.float32 and train.x.shape[1] == 64
    assert train.y.dtype == torch.int64
    assert 0.0 <= float(train.x.min()) and float(train.x.max()) <= 1.0
    again, _ = load_digits_split(seed=0)
    assert torch.equal(again.x, train.x) and torch.equal(again.y, train.y)


def _rows(d):
    return {tuple(r) for r in torch.cat([d.x, d.y[:, None].float()], 1).tolist()}


@pytest.mark.parametrize("partition", ["iid", "dirichlet"])
def test_shards_disjoint_covering_nonempty(split, partition):
    train, _ = split
    n = 6
    shards = [shard(train, n, i, seed=7, partition=partition, alpha=0.1) for i in range(n)]
    assert sum(len(s) for s in shards) == len(train)
    assert all(len(s) >= 2 for s in shards)
    union = set()
    for s in shards:
        union |= _rows(s)
    assert union == _rows(train)  # covering; with sizes summing to n this also means disjoint
    if partition == "iid":
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
    again = shard(train, n, 3, seed=7, partition=partition, alpha=0.1)
    assert torch.equal(again.x, shards[3].x) and torch.equal(again.y, shards[3].y)


def test_dirichlet_tiny_alpha_still_gives_every_shard_samples(split):
    train, _ = split
    sizes = [len(shard(train, 20, i, seed=1, partition="dirichlet", alpha=0.01)) for i in range(20)]
    assert min(sizes) >= 2 and sum(sizes) == len(train)


def test_fedavg_iid_reaches_accuracy(split):
    train, test = split
    shards = {f"p{i}": shard(train, 6, i, seed=1) for i in range(6)}
    samples = {p: len(d) for p, d in shards.items()}
    state = initial_state(SPEC, seed=0)
    for rnd in range(5):
        ups = {
            p: train_local(SPEC, state, d, epochs=2, lr=0.1, batch_size=16, seed=100 * rnd + i)
            for i, (p, d) in enumerate(sorted(shards.items()))
        }
        state = aggregate_weighted(state, ups, samples)
    acc = evaluate(SPEC, state, test)
    print(f"FedAvg test accuracy after 5 rounds: {acc:.4f}")
    assert acc > 0.8


def test_train_local_is_deterministic(split):
    train, _ = split
    d = shard(train, 6, 0, seed=1)
    base = initial_state(SPEC, 0)
    a = train_local(SPEC, base, d, epochs=1, lr=0.1, batch_size=16, seed=5)
    b = train_local(SPEC, base, d, epochs=1, lr=0.1, batch_size=16, seed=5)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["0.weight"], base["0.weight"])


def test_attacks_change_update_as_described(split):
    train, _ = split
    base = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.5])}
    trained = {"w": torch.tensor([2.0, 1.0]), "b": torch.tensor([1.5])}
    rng = np.random.default_rng(0)

    flipped = SignFlip().poison_update(base, trained, rng)
    assert torch.equal(flipped["w"], torch.tensor([0.0, 3.0]))
    assert torch.equal(flipped["b"], torch.tensor([-0.5]))

    scaled = Scaling(factor=10.0).poison_update(base, trained, rng)
    assert torch.equal(scaled["w"], torch.tensor([11.0, -8.0]))

    zeros = Zeros().poison_update(base, trained, rng)
    assert all(torch.count_nonzero(zeros[k]) == 0 for k in zeros)

    big = {"w": torch.zeros(20000)}
    noisy = GaussianNoise(sigma=2.0).poison_update(big, big, np.random.default_rng(0))
    assert noisy["w"].dtype == torch.float32
    assert float(noisy["w"].std()) == pytest.approx(2.0, rel=0.05)
    noisy2 = GaussianNoise(sigma=2.0).poison_update(big, big, np.random.default_rng(0))
    assert torch.equal(noisy["w"], noisy2["w"])  # seeded

    data = shard(train, 6, 0, seed=1)
    poisoned = LabelFlip().poison_data(data, rng)
    assert torch.equal(poisoned.y, 9 - data.y) and torch.equal(poisoned.x, data.x)
    # attacks that only touch one hook leave the other as identity
    assert LabelFlip().poison_update(base, trained, rng) is trained
    assert SignFlip().poison_data(data, rng) is data


def test_make_attack_registry():
    assert make_attack("none") is None and make_attack("") is None
    assert set(CLASSIC_ATTACKS) == {"sign_flip", "gaussian_noise", "scaling", "zeros",
                                    "label_flip", "alie", "false_scores"}
    assert set(ATTACKS) == set(CLASSIC_ATTACKS) | {
        "min_max", "min_sum", "ipm", "fang_median", "fang_krum", "mimic", "sybil_flip",
        "cmfl_capture", "cmfl_capture_noisy", "cmfl_capture_staggered", "cmfl_capture_spread", "cmfl_capture_heavy", "cmfl_elect",
        "clip_push", "clip_push_near", "clip_orthogonal", "clip_sneak", "clip_push_loose",
        "clip_push_wide", "coherence_frame", "choice_unlearn", "choice_unlearn_rotate",
        "choice_unlearn_boost"}
    for name, cls in ATTACKS.items():
        att = make_attack(name)
        assert isinstance(att, cls) and att.name == name
    assert isinstance(make_attack("sign-flip"), SignFlip)
    with pytest.raises(ValueError, match="sign_flip"):
        make_attack("teleport")


def test_alie_sends_mean_minus_z_std_of_what_it_observed():
    base = {"w": torch.tensor([0.0, 0.0])}
    honest = [{"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([3.0, 2.0])}]
    att = ALittleIsEnough(z=1.0).observe(honest, n_peers=20, n_colluders=6)
    out = att.poison_update(base, {"w": torch.tensor([9.0, 9.0])}, np.random.default_rng(0))
    # mean (2, 2), population std (1, 0) -> (1, 2)
    assert torch.equal(out["w"], torch.tensor([1.0, 2.0]))
    alone = ALittleIsEnough(z=1.0).poison_update(base, honest[0], np.random.default_rng(0))
    assert torch.equal(alone["w"], honest[0]["w"])  # nothing observed: std 0, own model
    # Baruch et al.: n = 50, m = 12 -> s = 14, z = Phi^-1(36/50) ~ 0.58
    assert alie_z(50, 12) == pytest.approx(0.583, abs=1e-3)
    assert alie_z(20, 6) == pytest.approx(0.674, abs=1e-3)  # s = 5, Phi^-1(0.75)
    assert alie_z(20, 0) == 0.0


def test_false_scores_pull_colluders_in_and_push_honest_out():
    att = FalseScores(inflate=10.0)
    lied = att.poison_scores({"h": 1.5, "x": 7.0}, colluders={"x"})
    assert lied == {"h": 15.0, "x": 0.0}
    assert SignFlip().poison_scores({"h": 1.5}, {"x"}) == {"h": 1.5}  # others report truthfully
    base = {"w": torch.tensor([1.0])}
    flipped = att.poison_update(base, {"w": torch.tensor([3.0])}, np.random.default_rng(0))
    assert torch.equal(flipped["w"], torch.tensor([-1.0]))


def test_plain_sgd_makes_the_bits_of_torch_optim_sgd():
    """PlainSgd (no torch.optim, so no torch._dynamo import) trains the same bits as
    torch.optim.SGD(momentum=0) on the MLP and on the cnn task (batch norm buffers too)."""
    import learning.training as training
    from learning.builtin_tasks import DigitsCnnTask, DigitsTask
    from learning.task import demo_shard

    class TorchSgd:
        def __init__(self, params, lr):
            self.opt = torch.optim.SGD(list(params), lr=lr, momentum=0.0)

        def zero_grad(self):
            self.opt.zero_grad(set_to_none=True)

        def step(self):
            self.opt.step()

    settings = {"partition": "iid", "test_fraction": 0.2}
    hp = {"epochs": 2, "lr": 0.1, "batch_size": 16}
    for task in (DigitsTask({}), DigitsCnnTask({})):
        local = demo_shard(task, 0, settings, 10, 1)[0]
        base = task.initial_state(0)
        ours = task.train_state(base, local, hp, 7)
        plain = training.PlainSgd
        training.PlainSgd = TorchSgd
        try:
            reference = task.train_state(base, local, hp, 7)
        finally:
            training.PlainSgd = plain
        assert sorted(ours) == sorted(reference)
        for k in ours:
            assert torch.equal(ours[k], reference[k]), k
