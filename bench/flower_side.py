"""The Flower side of bench/vs_flower.py: the demo's workload as Flower 1.42 clients and servers.

Runs only in the bench venv (`scripts/setup-bench-env` makes `.venv-bench`, with `flwr`), with
the repository on PYTHONPATH: the clients train with our own task code (learning.task), on the
same shards (learning.task.demo_shard), from the same initial model, with the genesis's epochs,
lr and batch size, so both systems do the same learning work.

Two Flower paths:

- `legacy-server` / `legacy-client`: `flwr.server.start_server` and `flwr.client.start_client`
  (Flower's gRPC server/client API, one long-lived process per client);
- `serverapp` / `clientapp`: a ServerApp and a ClientApp (Flower's Message API) for the
  deployment engine (SuperLink + SuperNodes); bench/vs_flower.py writes the Flower App folder
  that points at them.

Each server appends one JSON line per finished round to its marks file: the time (after
training, federated evaluation on every client's held-out shard and evaluation on the global
test split, as our peers do before they report a round committed) and the test accuracy.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from learning.data import Dataset
from learning.task import Task, demo_shard, load_task
from learning.tensors import ModelState

#: the demo's genesis `data` settings (p2p_node/demo.py)
DATA = {"dataset": "digits", "partition": "iid", "alpha": 0.5, "test_fraction": 0.2}
SEED = 0  # the demo's genesis seed


class Workload:
    """One client's (or the server's) view of the workload: task, training settings, shards."""

    def __init__(self, task: str, epochs: int, lr: float, batch_size: int, clients: int) -> None:
        torch.set_num_threads(1)  # as our peers (p2p_node/config.py: threads = 1)
        self.task: Task = load_task(task, {})
        self.training = {"epochs": epochs, "lr": lr, "batch_size": batch_size}
        self.clients = clients
        self.keys = sorted(self.task.initial_state(SEED))

    def initial(self) -> list[np.ndarray]:
        return self.to_arrays(self.task.initial_state(SEED))

    def to_arrays(self, state: ModelState) -> list[np.ndarray]:
        return [state[k].detach().cpu().numpy() for k in self.keys]

    def to_state(self, arrays: list[np.ndarray]) -> ModelState:
        like = self.task.initial_state(SEED)
        # FedAvg averages every array as float; integer buffers (batch norm's counter) go back
        # to their own dtype, as our aggregation keeps them
        return {k: torch.from_numpy(np.asarray(a)).to(like[k].dtype)
                for k, a in zip(self.keys, arrays)}

    def shard(self, index: int) -> tuple[Dataset, Dataset, Dataset]:
        return demo_shard(self.task, SEED, DATA, self.clients, index)

    def train(self, arrays: list[np.ndarray], data: Dataset,
              seed: int) -> tuple[list[np.ndarray], float]:
        started = time.perf_counter()
        state = self.task.train_state(self.to_state(arrays), data, self.training, seed)
        return self.to_arrays(state), time.perf_counter() - started

    def evaluate(self, arrays: list[np.ndarray], data: Dataset) -> float:
        return self.task.evaluate_state(self.to_state(arrays), data)["accuracy"]


def _mark(path: Path, server_round: int, accuracy: float | None,
          train_seconds: float | None) -> None:
    with path.open("a") as f:
        f.write(json.dumps({"round": server_round, "time": time.time(), "accuracy": accuracy,
                            "train_seconds": train_seconds}) + "\n")


# Flower's gRPC server/client API ------------------------------------------------------------
def legacy_server(args: argparse.Namespace) -> None:
    import flwr.server
    from flwr.common import ndarrays_to_parameters
    from flwr.server.strategy import FedAvg

    w = Workload(args.task, args.epochs, args.lr, args.batch_size, args.clients)
    test = w.shard(0)[2]
    marks = Path(args.marks)
    last_accuracy: dict[int, float] = {}
    train_seconds: dict[int, float] = {}

    def central(server_round: int, arrays: list[np.ndarray], config: dict) -> tuple[float, dict]:
        accuracy = w.evaluate(arrays, test)
        last_accuracy[server_round] = accuracy
        return 0.0, {"accuracy": accuracy}

    class MarkedFedAvg(FedAvg):
        def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
            seconds = [fit.metrics["train_seconds"] for _, fit in results]
            train_seconds[server_round] = sum(seconds) / max(1, len(seconds))
            return super().aggregate_fit(server_round, results, failures)

        # the legacy server evaluates centrally, then federated: the round ends here
        def aggregate_evaluate(self, server_round: int, results: Any, failures: Any) -> Any:
            out = super().aggregate_evaluate(server_round, results, failures)
            _mark(marks, server_round, last_accuracy.get(server_round),
                  train_seconds.get(server_round))
            return out

    trainers = max(1, round(args.train_fraction * args.clients))
    strategy = MarkedFedAvg(
        fraction_fit=args.train_fraction, fraction_evaluate=1.0, min_fit_clients=trainers,
        min_evaluate_clients=args.clients, min_available_clients=args.clients,
        evaluate_fn=central, on_fit_config_fn=lambda r: {"server_round": r},
        initial_parameters=ndarrays_to_parameters(w.initial()))
    flwr.server.start_server(server_address=args.address, strategy=strategy,
                             config=flwr.server.ServerConfig(num_rounds=args.rounds))


def legacy_client(args: argparse.Namespace) -> None:
    import flwr.client

    w = Workload(args.task, args.epochs, args.lr, args.batch_size, args.clients)
    local, held_out, _ = w.shard(args.index)

    class ShardClient(flwr.client.NumPyClient):
        def get_parameters(self, config: dict) -> list[np.ndarray]:
            return w.initial()

        def fit(self, parameters: list[np.ndarray], config: dict) -> tuple:
            seed = int(config.get("server_round", 0)) * 1000 + args.index
            arrays, seconds = w.train(parameters, local, seed)
            return arrays, len(local), {"train_seconds": seconds}

        def evaluate(self, parameters: list[np.ndarray], config: dict) -> tuple:
            return 0.0, len(held_out), {"accuracy": w.evaluate(parameters, held_out)}

    flwr.client.start_client(server_address=args.address, client=ShardClient().to_client(),
                             insecure=True)


# Flower's deployment engine: ServerApp + ClientApp (Message API) ----------------------------
def _workload(run_config: dict) -> Workload:
    return Workload(str(run_config["task"]), int(run_config["epochs"]), float(run_config["lr"]),
                    int(run_config["batch-size"]), int(run_config["clients"]))


def make_apps() -> tuple[Any, Any]:
    """(serverapp, clientapp) for the Flower App folder bench/vs_flower.py writes."""
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg

    def arrays_of(record: Any) -> list[np.ndarray]:
        return record.to_numpy_ndarrays()

    serverapp = ServerApp()

    @serverapp.main()
    def server_main(grid: Grid, context: Context) -> None:
        cfg = context.run_config
        w = _workload(cfg)
        test = w.shard(0)[2]
        marks = Path(str(cfg["marks"]))
        train_seconds: dict[int, float] = {}

        def central(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            accuracy = w.evaluate(arrays_of(arrays), test)
            if server_round > 0:  # the round's last step: train, evaluate, evaluate centrally
                _mark(marks, server_round, accuracy, train_seconds.get(server_round))
            return MetricRecord({"accuracy": accuracy})

        class MarkedFedAvg(FedAvg):
            def aggregate_train(self, server_round: int, replies: Any) -> Any:
                arrays, metrics = super().aggregate_train(server_round, replies)
                if metrics is not None and "train-seconds" in metrics:
                    train_seconds[server_round] = float(metrics["train-seconds"])
                return arrays, metrics

        clients = int(cfg["clients"])
        fraction = float(cfg["train-fraction"])
        strategy = MarkedFedAvg(fraction_train=fraction, fraction_evaluate=1.0,
                          min_train_nodes=max(1, round(fraction * clients)),
                          min_evaluate_nodes=clients, min_available_nodes=clients)
        strategy.start(grid=grid, initial_arrays=ArrayRecord(w.initial()),
                       num_rounds=int(cfg["rounds"]), train_config=ConfigRecord({}),
                       evaluate_fn=central)

    clientapp = ClientApp()

    def client_shard(context: Context) -> tuple[Workload, int, tuple[Dataset, Dataset, Dataset]]:
        w = _workload(context.run_config)
        index = int(context.node_config["partition-id"])
        return w, index, w.shard(index)

    @clientapp.train()
    def client_train(msg: Message, context: Context) -> Message:
        w, index, (local, _, _) = client_shard(context)
        seed = int(msg.content["config"].get("server-round", 0)) * 1000 + index
        arrays, seconds = w.train(arrays_of(msg.content["arrays"]), local, seed)
        content = RecordDict({"arrays": ArrayRecord(arrays),
                              "metrics": MetricRecord({"num-examples": len(local),
                                                       "train-seconds": seconds})})
        return Message(content=content, reply_to=msg)

    @clientapp.evaluate()
    def client_evaluate(msg: Message, context: Context) -> Message:
        w, _, (_, held_out, _) = client_shard(context)
        accuracy = w.evaluate(arrays_of(msg.content["arrays"]), held_out)
        content = RecordDict({"metrics": MetricRecord({"num-examples": len(held_out),
                                                       "accuracy": accuracy})})
        return Message(content=content, reply_to=msg)

    return serverapp, clientapp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("legacy-server", "legacy-client"))
    parser.add_argument("--address", required=True)
    parser.add_argument("--task", default="digits")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--train-fraction", type=float, default=0.6)
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--marks", default="marks.jsonl")
    args = parser.parse_args()
    (legacy_server if args.mode == "legacy-server" else legacy_client)(args)


if __name__ == "__main__":
    main()
