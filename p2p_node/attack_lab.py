"""Attack-lab misbehaviour as filters over the round core's actions, installed only when a peer
runs with `--byzantine` or a score-poisoning `--attack`: honest peers never construct one, and
the honest code paths (p2p_node.round_core, the driver) hold no attack branch.

Pure: the filters rewrite actions (bft.byzantine says what a malicious member sends instead);
the driver carries out whatever comes out, as it does for an honest core.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from bft.byzantine import BEHAVIOURS, conflicting_proposal
from bft.messages import KINDS as PBFT_KINDS
from learning.attacks import Attack
from p2p_node.round_machine import Action, OfferBlob, Publish

log = logging.getLogger("p2p_node.attack_lab")

#: Distances by trainer -> the distances a lying member reports instead.
ScoreTamper = Callable[[dict[str, float]], dict[str, float]]


@dataclass(frozen=True)
class CommitteeMisbehaviour:
    """`--byzantine`: equivocate (two conflicting proposals as leader), silent (no pBFT
    message at all) or withhold (announce a large update, serve none of its bytes)."""

    behaviour: str

    def __post_init__(self) -> None:
        if self.behaviour not in BEHAVIOURS or self.behaviour == "none":
            raise ValueError(f"not a byzantine behaviour: {self.behaviour!r}")

    def outputs(self, actions: list[Action]) -> list[Action]:
        """The actions a peer misbehaving this way carries out instead of `actions`."""
        out: list[Action] = []
        for action in actions:
            if self.behaviour == "silent" and isinstance(action, Publish) and \
                    action.kind in PBFT_KINDS:
                continue
            if self.behaviour == "equivocate" and isinstance(action, Publish) and \
                    action.kind in ("pre_prepare", "new_view"):
                log.warning("byzantine: sending two conflicting %s", action.kind)
                out += [action, Publish(action.kind, conflicting_proposal(action.payload))]
                continue
            if self.behaviour == "withhold" and isinstance(action, OfferBlob):
                log.warning("byzantine: serving none of our update's bytes")
                continue
            out.append(action)
        return out


def misbehaviour_for(behaviour: str) -> CommitteeMisbehaviour | None:
    """The filter for `--byzantine behaviour`, None for an honest peer ("none")."""
    return None if behaviour == "none" else CommitteeMisbehaviour(behaviour)


def score_tamper_for(attack: Attack | None, colluders: frozenset[str]) -> ScoreTamper | None:
    """A lying committee member's rewrite of its distances (an attack that poisons scores),
    handed to the round machine before it signs its vector; None for every other peer."""
    if attack is None or type(attack).poison_scores is Attack.poison_scores:
        return None
    return lambda distances: attack.poison_scores(distances, colluders)
