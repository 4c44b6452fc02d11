"""Attack-lab misbehaviour as filters over the round core's actions, installed only when a peer
runs with `--byzantine` or a score-poisoning `--attack` (`attack_filter`): honest peers never
construct one, and the honest code paths (p2p_node.round_core, p2p_node.round_machine, the
driver) hold no attack branch.

Pure: the filters rewrite actions (bft.byzantine says what a malicious member sends instead);
the driver carries out whatever comes out, as it does for an honest core.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Protocol

from bft.byzantine import BEHAVIOURS, conflicting_proposal
from bft.messages import KINDS as PBFT_KINDS
from chain.round_rules import scores_payload
from learning.attacks import Attack
from p2p_node.round_machine import Action, OfferBlob, Publish

log = logging.getLogger("p2p_node.attack_lab")


class ActionFilter(Protocol):
    """What the driver runs the round core's actions through before carrying them out."""

    def outputs(self, actions: list[Action]) -> list[Action]: ...


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


@dataclass(frozen=True)
class ScoreLie:
    """A score-poisoning `--attack` (false_scores, the omniscient colluders) on the committee:
    the distances of our score vector rewritten by the attack before the vector is signed.

    Only the `Publish` changes, not the `Persist` the core writes ahead of it: the record keeps
    the measured vector and the lie is a pure function of it, so a member restarted mid-round
    publishes the recorded vector again, rewritten the same way: the same signed lie, never a
    second, different vector (which its peers would hold as evidence)."""

    attack: Attack
    #: whom the lie favours (its fellow attackers and itself)
    colluders: frozenset[str]

    def outputs(self, actions: list[Action]) -> list[Action]:
        return [self._lie(a) if isinstance(a, Publish) and a.kind == "scores" else a
                for a in actions]

    def _lie(self, scores: Publish) -> Publish:
        entries = scores.payload["scores"]  # scores_payload: [[trainer, digest, distance]]
        digests = {trainer: digest for trainer, digest, _ in entries}
        measured = {trainer: distance for trainer, _, distance in entries}
        reported = self.attack.poison_scores(measured, self.colluders)
        return replace(scores, payload=scores_payload(
            {t: (digests[t], d) for t, d in reported.items()}))


@dataclass(frozen=True)
class Misbehaviours:
    """Several filters, applied in order."""

    filters: tuple[ActionFilter, ...]

    def outputs(self, actions: list[Action]) -> list[Action]:
        for f in self.filters:
            actions = f.outputs(actions)
        return actions


def score_lie_for(attack: Attack | None, colluders: frozenset[str]) -> ScoreLie | None:
    """The rewrite of a lying committee member's score vector (an attack that poisons scores);
    None for every other peer."""
    if attack is None or type(attack).poison_scores is Attack.poison_scores:
        return None
    return ScoreLie(attack, colluders)


def attack_filter(behaviour: str = "none", attack: Attack | None = None,
                  colluders: frozenset[str] = frozenset()) -> ActionFilter | None:
    """The filter a peer run with `--byzantine behaviour` and `--attack attack` puts over its
    round core's actions; None for an honest peer, which then runs the core unfiltered."""
    filters = [f for f in (score_lie_for(attack, colluders), misbehaviour_for(behaviour))
               if f is not None]
    if not filters:
        return None
    return filters[0] if len(filters) == 1 else Misbehaviours(tuple(filters))
