"""Synthetic but valid chains, with real signatures, for sync tests and bench/sync.py.

`build_chain` runs the pure round rules (`chain.round_rules.derive_block`) with a tiny model:
trainers sign random updates of the base model, committee members sign their score vectors, a
quorum signs the commit certificate. Every block verifies exactly as a network-made one does.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from chain.block import Block, CommitCertificate, CommittedBlock, commit_envelope
from chain.genesis import Genesis
from chain.round_rules import ReceivedUpdate, RoundContext, derive_block, scores_payload
from chain.store import BlockStore, ModelStore
from chain.verify import ChainVerifier, verify_store
from gossip.envelope import Envelope
from gossip.peer_keys import Signer
from learning.model import ModelSpec, initial_state
from learning.scoring import score_updates
from learning.tensors import ModelState, encode_state, state_bytes, state_hash
from chain.genesis import SELECTION_PRESETS

#: the scored rule (an elected committee scores) these tests exercise; judged rounds, the
#: default, are tests/test_judged_round.py and tests/test_judged_net.py
SCORED = SELECTION_PRESETS["cmfl-clip-far"]


@dataclass
class SyntheticChain:
    """A genesis, its members' keys, and a valid chain with each block's model bytes."""

    genesis: Genesis
    signers: dict[str, Signer]
    blocks: list[CommittedBlock]
    models: list[bytes]

    def write(self, data_dir: Path, upto: int | None = None, keep_models: int = 1) -> None:
        """Store the first `upto` blocks (all by default) and the last `keep_models` models."""
        data_dir.mkdir(parents=True, exist_ok=True)
        blocks = self.blocks[:upto]
        store, models = BlockStore(data_dir / "chain.sqlite"), ModelStore(data_dir / "models")
        for raw in self.models[:len(blocks)][-keep_models:]:
            models.put(raw)
        store.append_many(blocks)
        store.close()


def _noisy(state: ModelState, gen: torch.Generator, scale: float) -> ModelState:
    return {k: v + scale * torch.randn(v.shape, generator=gen) for k, v in state.items()}


class ChainBuilder:
    """Grows a valid chain one round at a time, as a network would: `step` runs one round.

    Trainers sign random updates of the base model, committee members sign their score vectors,
    a quorum signs the commit certificate. `silent` trainers send nothing that round; `joins`
    are signed join requests the round's leader holds (chain.membership)."""

    def __init__(self, members: int = 10, committee: int = 4, seed: int = 0,
                 layers: tuple[int, ...] = (4, 3), membership: dict | None = None) -> None:
        signers = [Signer(bytes([seed % 256, i + 1]) + bytes(30)) for i in range(members)]
        self.by_id = {s.peer_id: s for s in signers}
        self.genesis = Genesis(name="synthetic", members=tuple(self.by_id), seed=seed,
                               committee=tuple(s.peer_id for s in signers[:committee]),
                               model={"layers": list(layers)}, membership=membership or {},
                               selection=SCORED)
        self.verifier = ChainVerifier(self.genesis)  # each round's context, as a peer's chain
        self.gen = torch.Generator().manual_seed(seed)
        self.state = initial_state(ModelSpec(layers), seed)
        self.blocks: list[CommittedBlock] = []
        self.models: list[bytes] = []

    def signer(self, index: int) -> Signer:
        """A key of this builder's family outside the genesis (a would-be joiner), by index."""
        seed = self.genesis.seed
        signer = Signer(bytes([seed % 256, 200 + index]) + bytes(30))
        self.by_id[signer.peer_id] = signer
        return signer

    def context(self) -> RoundContext:
        return replace(self.verifier.context(), base_state=self.state,
                       base_hash=state_hash(self.state))

    def proposal(self, silent: frozenset[str] | set[str] = frozenset(),
                 joins: tuple[bytes, ...] = ()) -> tuple[Block, ModelState]:
        """The block the next round's signed inputs imply (not certified, not added)."""
        ctx = self.context()
        updates: dict[str, ReceivedUpdate] = {}
        for trainer in ctx.trainers:
            if trainer in silent:
                continue
            trained = _noisy(self.state, self.gen, 0.01)
            env = Envelope("update", ctx.network_id, ctx.height, trainer, {
                "model": encode_state(trained), "samples": 100, "base": ctx.base_hash,
            }).signed_by(self.by_id[trainer])
            updates[trainer] = ReceivedUpdate(trainer, env.digest(), 100, trained)
        vectors = []
        for member in ctx.committee:
            distances = score_updates(_noisy(self.state, self.gen, 0.01),
                                      {t: u.state for t, u in updates.items()})
            body = scores_payload({t: (updates[t].digest, d) for t, d in distances.items()})
            vectors.append(Envelope("scores", ctx.network_id, ctx.height, member, body)
                           .signed_by(self.by_id[member]).encode())
        return derive_block(ctx, vectors, updates, joins=joins)

    def certify(self, block: Block) -> CommittedBlock:
        """`block` with a quorum of this round's committee's signed commits."""
        ctx = self.verifier.context()
        votes = tuple((m, commit_envelope(ctx.network_id, block.height, 0, block.hash())
                       .signed_by(self.by_id[m]).signature) for m in ctx.committee[:ctx.quorum])
        return CommittedBlock(block, CommitCertificate(0, votes))

    def step(self, silent: frozenset[str] | set[str] = frozenset(),
             joins: tuple[bytes, ...] = ()) -> CommittedBlock:
        """Run one round and add its block (checked: the builder only makes valid chains)."""
        block, self.state = self.proposal(silent, joins)
        committed = self.certify(block)
        self.verifier.check(committed)
        self.verifier.advance(committed)
        self.blocks.append(committed)
        self.models.append(state_bytes(self.state))
        return committed

    def chain(self) -> SyntheticChain:
        return SyntheticChain(self.genesis, self.by_id, self.blocks, self.models)


def build_chain(n_blocks: int, members: int = 10, committee: int = 4, seed: int = 0,
                layers: tuple[int, ...] = (4, 3)) -> SyntheticChain:
    """`n_blocks` valid blocks of a fresh network of `members` peers (deterministic in seed)."""
    builder = ChainBuilder(members, committee, seed, layers)
    for _ in range(n_blocks):
        builder.step()
    return builder.chain()


def test_a_synthetic_chain_verifies_and_rotates_its_committee(tmp_path):
    chain = build_chain(6)
    chain.write(tmp_path, keep_models=6)
    store, models = BlockStore(tmp_path / "chain.sqlite"), ModelStore(tmp_path / "models")
    report = verify_store(chain.genesis, store, models)
    assert report.ok and report.blocks == 6 and report.models_checked == 6, report
    assert len({b.block.committee for b in chain.blocks}) > 1, "the election never moved"
