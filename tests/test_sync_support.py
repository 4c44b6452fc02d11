"""Synthetic but valid chains, with real signatures, for sync tests and bench/sync.py.

`build_chain` runs the pure round rules (`chain.round_rules.derive_block`) with a tiny model:
trainers sign random updates of the base model, committee members sign their score vectors, a
quorum signs the commit certificate. Every block verifies exactly as a network-made one does.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from chain.block import CommitCertificate, CommittedBlock, commit_envelope
from chain.genesis import Genesis
from chain.round_rules import ReceivedUpdate, derive_block, scores_payload
from chain.store import BlockStore, ModelStore
from chain.verify import ChainVerifier, verify_store
from gossip.envelope import Envelope
from gossip.peer_keys import Signer
from learning.model import ModelSpec, initial_state
from learning.scoring import score_updates
from learning.tensors import ModelState, encode_state, state_bytes, state_hash


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


def build_chain(n_blocks: int, members: int = 10, committee: int = 4, seed: int = 0,
                layers: tuple[int, ...] = (4, 3)) -> SyntheticChain:
    """`n_blocks` valid blocks of a fresh network of `members` peers (deterministic in seed)."""
    signers = [Signer(bytes([seed % 256, i + 1]) + bytes(30)) for i in range(members)]
    by_id = {s.peer_id: s for s in signers}
    genesis = Genesis(name="synthetic", members=tuple(by_id), seed=seed,
                      committee=tuple(s.peer_id for s in signers[:committee]),
                      model={"layers": list(layers)})
    verifier = ChainVerifier(genesis)  # supplies each round's context, as a peer's chain does
    gen = torch.Generator().manual_seed(seed)
    state = initial_state(ModelSpec(layers), seed)
    blocks: list[CommittedBlock] = []
    models: list[bytes] = []
    for height in range(n_blocks):
        ctx = replace(verifier.context(), base_state=state, base_hash=state_hash(state))
        updates: dict[str, ReceivedUpdate] = {}
        for trainer in ctx.trainers:
            trained = _noisy(state, gen, 0.01)
            env = Envelope("update", ctx.network_id, height, trainer, {
                "model": encode_state(trained), "samples": 100, "base": ctx.base_hash,
            }).signed_by(by_id[trainer])
            updates[trainer] = ReceivedUpdate(trainer, env.digest(), 100, trained)
        vectors = []
        for member in ctx.committee:
            distances = score_updates(_noisy(state, gen, 0.01),
                                      {t: u.state for t, u in updates.items()})
            body = scores_payload({t: (updates[t].digest, d) for t, d in distances.items()})
            vectors.append(Envelope("scores", ctx.network_id, height, member, body)
                           .signed_by(by_id[member]).encode())
        block, state = derive_block(ctx, vectors, updates)
        votes = tuple((m, commit_envelope(ctx.network_id, height, 0, block.hash())
                       .signed_by(by_id[m]).signature) for m in ctx.committee[:ctx.quorum])
        committed = CommittedBlock(block, CommitCertificate(0, votes))
        verifier.check(committed)  # the builder itself must only ever make valid chains
        verifier.advance(committed)
        blocks.append(committed)
        models.append(state_bytes(state))
    return SyntheticChain(genesis, by_id, blocks, models)


def test_a_synthetic_chain_verifies_and_rotates_its_committee(tmp_path):
    chain = build_chain(6)
    chain.write(tmp_path, keep_models=6)
    store, models = BlockStore(tmp_path / "chain.sqlite"), ModelStore(tmp_path / "models")
    report = verify_store(chain.genesis, store, models)
    assert report.ok and report.blocks == 6 and report.models_checked == 6, report
    assert len({b.block.committee for b in chain.blocks}) > 1, "the election never moved"
