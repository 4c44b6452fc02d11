"""Where a chain stands: the one computation of the next round's position from the blocks so far.

The next height and the previous hash, the committee the last block elected, the members (the
roster after every join and departure), the members convicted of misbehaviour, and the model the
next round starts from. The round driver (p2p_node.node), full verification (chain.verify) and
sync (chain.sync, p2p_node.sync_service) all advance this one position. Pure: a store is read
through `get` only.
"""

from __future__ import annotations

from typing import Iterable, Protocol

from chain.block import CommittedBlock
from chain.genesis import Genesis
from chain.membership import MembershipRules, Roster
from chain.round_rules import RoundContext, recorded_misbehaviour, trainers_for
from learning.cmfl import RoundConfig
from learning.compression import UpdateCodec
from learning.dp_accounting import DpPolicy


class BlockSource(Protocol):
    """What a position follows: blocks by height (None past the head)."""

    def get(self, height: int) -> CommittedBlock | None: ...


class ForkError(Exception):
    """Blocks offered as extending our chain differ from blocks it already holds."""


class ChainPosition:
    """The position after the blocks advanced over (from the genesis on)."""

    def __init__(self, genesis: Genesis) -> None:
        self.network_id = genesis.network_id
        self.rules = MembershipRules.from_settings(genesis.membership, genesis.members)
        #: the member set before the next block (genesis members, joins, departures)
        self.roster = Roster.of_genesis(genesis.members)
        self.selection = RoundConfig.from_selection(genesis.selection)
        self.dp = DpPolicy.from_training(genesis.training)
        self.codec = UpdateCodec.from_settings(genesis.compression)
        #: whether the whole membership, not the committee, signs certificates
        self.members_sign = genesis.consensus == "members"
        #: whether updates are sealed to the round's validators (genesis `sealing`)
        self.sealed = genesis.sealing == "validators"
        #: height of the next block
        self.height = 0
        self.prev_hash = self.network_id
        self.committee = tuple(sorted(genesis.committee))
        self.excluded: frozenset[str] = frozenset()
        #: model hash of the last block (None before the first)
        self.head_model: bytes | None = None

    @property
    def members(self) -> tuple[str, ...]:
        """The members the next round starts with."""
        return self.roster.members

    def context(self) -> RoundContext:
        """The next round's context, minus its model (`base_state` empty, `base_hash` the head
        block's model hash): a round driver fills in the model, outline_round does not read
        it."""
        judged = self.selection.judged
        # Judged rounds (learning.choice) have no elected committee: every member trains,
        # judges and runs pBFT on the block.
        committee = self.members if judged else self.committee
        return RoundContext(
            network_id=self.network_id, height=self.height, prev_hash=self.prev_hash,
            members=self.members, committee=committee,
            trainers=trainers_for(self.members, committee, judged), base_state={},
            base_hash=self.head_model or b"", selection=self.selection, excluded=self.excluded,
            dp=self.dp, membership=self.rules, roster=self.roster, codec=self.codec,
            validators=self.members if self.members_sign else (), sealed=self.sealed)

    def convicts(self, committed: CommittedBlock) -> set[str]:
        """The members this block convicts for the first time (before `advance` over it)."""
        return recorded_misbehaviour(committed.block, self.selection) - self.excluded

    def advance(self, committed: CommittedBlock) -> None:
        """Move past a block already checked (or one of our own, re-derived when committed)."""
        block = committed.block
        self.excluded = self.excluded | frozenset(recorded_misbehaviour(block, self.selection))
        self.roster = self.roster.after(block)
        self.height = block.height + 1
        self.prev_hash = block.hash()
        self.committee = block.next_committee
        self.head_model = block.model_hash

    def follow(self, store: BlockSource) -> None:
        """Advance, unchecked, over the blocks `store` holds beyond this position (our own
        chain: every block in it was checked before it was appended)."""
        while (committed := store.get(self.height)) is not None:
            self.advance(committed)


def beyond_head(store: BlockSource, head_height: int,
                blocks: Iterable[CommittedBlock]) -> list[CommittedBlock]:
    """Of verified `blocks` (a sync's), those past our head at `head_height` (-1: no block);
    ForkError if one at or below it is not the block we hold there (blocks we committed while
    syncing must be the same ones)."""
    new: list[CommittedBlock] = []
    for committed in blocks:
        height = committed.block.height
        if height > head_height:
            new.append(committed)
            continue
        ours = store.get(height)
        if ours is None or ours.block.hash() != committed.block.hash():
            raise ForkError(f"certified block {height} differs from ours")
    return new
