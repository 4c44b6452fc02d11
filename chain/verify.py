"""Full verification of a chain from its genesis, with no update, no network and no clock.

A block is valid in its place when it links to the previous block, its certificate holds a
quorum of valid signatures of the committee the previous block elected (the genesis committee at
height 0; of the whole membership on a genesis with `consensus = "members"`), and everything its signed score vectors decide re-derives: selection, the update
digests, evidence, the next committee and the membership changes (each admission's signed join
request re-checked, each departure re-derived from the chain: `chain.round_rules.outline_round`,
the proposer's own code). Only the new model cannot be re-derived: the updates it aggregates are not stored. It is
bound by the certificate (2f+1 members re-derived it from the updates before signing), and where
the checkpoint is held its bytes are checked against the block's model hash.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from chain.block import BlockError, CommittedBlock
from chain.genesis import Genesis
from chain.position import ChainPosition
from chain.round_rules import MAX_SAMPLES, check_outline
from learning.tensors import state_from_bytes

if TYPE_CHECKING:  # the checks are pure; only verify_store walks a store on disk (sqlite)
    from chain.store import BlockStore, ModelStore

__all__ = ["MAX_SAMPLES", "ChainVerifier", "VerifyReport", "check_model", "verify_store"]


class ChainVerifier(ChainPosition):
    """A chain position (chain.position) and the check of the block that comes next. Feed
    blocks in order: `check`, then `advance`."""

    def check(self, committed: CommittedBlock) -> None:
        """Raise BlockError (naming the first problem) unless this is a valid next block."""
        block = committed.block
        if block.network_id != self.network_id:
            raise BlockError("block of another network")
        if block.height != self.height:
            raise BlockError(f"height {block.height} where {self.height} comes next")
        if block.prev_hash != self.prev_hash:
            raise BlockError(f"hash link broken: prev_hash {block.prev_hash.hex()[:12]} is not "
                             f"the previous block's hash {self.prev_hash.hex()[:12]}")
        ctx = self.context()
        if block.committee != ctx.committee:
            raise BlockError("committee is not the one the previous block elected")
        committed.certificate.verify(block, ctx.consensus_members)
        check_outline(ctx, block)


def check_model(committed: CommittedBlock, models: ModelStore) -> bool | None:
    """True if the block's checkpoint is held and intact, None if not held; BlockError if the
    file held under its hash has other bytes or is not a model."""
    digest = committed.block.model_hash
    if not models.has(digest):
        return None
    raw = models.get(digest)
    if raw is None:
        raise BlockError(f"model checkpoint {digest.hex()[:12]} on disk does not match the "
                         "block's model hash")
    try:
        state_from_bytes(raw)
    except Exception as exc:  # hash-correct but not a model: the block certified garbage
        raise BlockError(f"model checkpoint {digest.hex()[:12]} is not a model: {exc}") from None
    return True


@dataclass
class VerifyReport:
    """Outcome of verifying a local chain."""

    blocks: int = 0
    #: the first invalid height and why, or None if every block verified
    bad_height: int | None = None
    reason: str = ""
    models_checked: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.bad_height is None

    def summary(self) -> str:
        if self.ok:
            return f"ok: {self.blocks} blocks"
        return f"bad block at height {self.bad_height}: {self.reason}"


def verify_store(genesis: Genesis, store: BlockStore, models: ModelStore | None = None
                 ) -> VerifyReport:
    """Verify a peer's whole chain from genesis, and every checkpoint it holds for it."""
    from chain.store import StoreError  # here, not above: chain.verify imports no sqlite

    report = VerifyReport()
    verifier = ChainVerifier(genesis)
    heights = store.heights()
    for height in heights:
        try:
            if height != verifier.height:
                raise BlockError(f"block {verifier.height} is missing from the store")
            try:
                committed = store.get(height)
            except BlockError as exc:
                raise BlockError(f"stored bytes: {exc}") from None
            assert committed is not None
            verifier.check(committed)
            if models is not None and check_model(committed, models):
                report.models_checked += 1
        except (BlockError, StoreError) as exc:
            report.bad_height, report.reason = verifier.height, str(exc)
            return report
        verifier.advance(committed)
        report.blocks += 1
    report.notes.append("model aggregates not re-derived: the updates are not stored (each "
                        "model is bound by its block's certificate)")
    if models is not None and heights and not models.has(verifier.head_model or b""):
        report.notes.append("the head block's model checkpoint is not held: this peer cannot "
                            "start the next round until it syncs")
    return report
