"""Attack-lab misbehaviour as filters over the round core's actions, installed only when a peer
runs with `--byzantine` or a score-poisoning `--attack` (`attack_filter`): honest peers never
construct one, and the honest code paths (p2p_node.round_core, p2p_node.round_machine, the
driver) hold no attack branch.

Pure: the filters rewrite actions (bft.byzantine says what a malicious member sends instead);
the driver carries out whatever comes out, as it does for an honest core. `OmniscientColluder`
decides when an omniscient attacker (learning.attacks.Omniscient) has seen enough of the round
and what it then sends; p2p_node.collusion is its driver (the waiting, the colluders' channel).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Mapping, Protocol

import numpy as np
import torch

from bft.byzantine import BEHAVIOURS, conflicting_proposal, conflicting_vote
from bft.messages import KINDS as PBFT_KINDS
from chain.round_rules import RoundContext, scores_payload
from learning.attacks import Attack, Omniscient, RoundView
from learning.tensors import ModelState
from p2p_node.round_machine import Action, OfferBlob, Publish

log = logging.getLogger("p2p_node.attack_lab")


class ActionFilter(Protocol):
    """What the driver runs the round core's actions through before carrying them out."""

    def outputs(self, actions: list[Action]) -> list[Action]: ...


@dataclass(frozen=True)
class CommitteeMisbehaviour:
    """`--byzantine`: equivocate (two conflicting proposals as leader), equivocate_votes (that,
    and as any validator a second, conflicting prepare and commit beside each one it signs),
    silent (no pBFT message at all) or withhold (announce a large update, serve none of its
    bytes)."""

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
            equivocating = self.behaviour in ("equivocate", "equivocate_votes")
            if equivocating and isinstance(action, Publish) and \
                    action.kind in ("pre_prepare", "new_view"):
                log.warning("byzantine: sending two conflicting %s", action.kind)
                out += [action, Publish(action.kind, conflicting_proposal(action.payload))]
                continue
            if self.behaviour == "equivocate_votes" and isinstance(action, Publish) and \
                    action.kind in ("prepare", "commit"):
                log.warning("byzantine: sending two conflicting %s", action.kind)
                out += [action, Publish(action.kind, conflicting_vote(action.payload))]
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
        return [self._lie(a) if isinstance(a, Publish) and a.kind == "scores"
                and "scores" in a.payload else a for a in actions]

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


@dataclass(frozen=True)
class OmniscientColluder:
    """An attacking peer running an omniscient attack, as the literature's threat model has it
    and as the real network allows: every update is gossiped to every peer, so a colluder
    holds the round's honest updates (inline or fetched blobs, exactly what the round core
    accepted) before the collect deadline. It trains honestly, shares its trained model with
    its fellow colluders (p2p_node.collusion, a side channel of their own), waits until it
    holds every honest trainer's update and every fellow's model, or until `send_at` seconds
    into the round, then sends `attack.poison_update` over the RoundView of what it holds.

    What it cannot see, it estimates: honest committee members never publish their reference
    models, so each stands in as the mean of the honest trainers' models (for a crafted update
    and an honest one alike, the distance to a member's model is about the root of the squared
    distance to that centre plus the member's own spread, so the centre keeps the ranking the
    attack aims at); a fellow whose model did not arrive in time stands in as our own.
    """

    attack: Omniscient
    me: str
    #: every colluder, us included
    colluders: frozenset[str]
    #: seconds after the round began at which it sends whatever it holds by then
    send_at: float

    @classmethod
    def for_peer(cls, attack: Attack | None, me: str, colluders: list[str] | frozenset[str],
                 collect_timeout: float) -> OmniscientColluder | None:
        """The colluder of `--attack` (an omniscient one), None for every other peer. It sends
        a quarter of the collect deadline (at least 1 s) before it: peers start a round a
        moment apart, and the update must still reach every committee member in time."""
        if not isinstance(attack, Omniscient):
            return None
        margin = max(1.0, 0.25 * collect_timeout)
        return cls(attack, me, frozenset(colluders) | {me}, max(0.0, collect_timeout - margin))

    @property
    def fellows(self) -> frozenset[str]:
        return self.colluders - {self.me}

    def awaited(self, ctx: RoundContext) -> frozenset[str]:
        """The honest trainers whose updates it waits for (as the committee does, not for
        members with recorded misbehaviour)."""
        return frozenset(ctx.trainers) - self.colluders - ctx.excluded

    def ready(self, ctx: RoundContext, updates: Mapping[str, object],
              fellows: Mapping[str, object], elapsed: float) -> bool:
        """Whether to craft now: everything is in, or the time to send has come."""
        if elapsed >= self.send_at:
            return True
        return self.awaited(ctx) <= set(updates) and \
            (self.fellows & set(ctx.members)) <= set(fellows)

    def round_view(self, ctx: RoundContext, own: ModelState,
                   updates: Mapping[str, ModelState],
                   fellows: Mapping[str, ModelState]) -> RoundView:
        """What the colluders know of round `ctx.height` (see the class docstring)."""
        honest = {p: s for p, s in sorted(updates.items()) if p not in self.colluders}
        members = [m for m in ctx.committee if m not in self.colluders]
        if honest and members:
            keys = sorted(ctx.base_state)
            centre = {k: torch.stack([s[k].to(torch.float64) for s in honest.values()])
                      .mean(dim=0).to(ctx.base_state[k].dtype) for k in keys}
            honest.update({m: centre for m in members})
        known = {p: fellows.get(p, own) for p in sorted(self.fellows)}
        return RoundView(ctx.base_state, honest, {**known, self.me: own}, tuple(ctx.committee))

    def update_to_send(self, ctx: RoundContext, own: ModelState,
                       updates: Mapping[str, ModelState], fellows: Mapping[str, ModelState],
                       rng: np.random.Generator) -> ModelState:
        """The crafted model (our trained one while fewer than two honest updates are held:
        the stand-ins alone give nothing to aim at)."""
        if len(set(updates) - self.colluders) < 2:
            return own
        view = self.round_view(ctx, own, updates, fellows)
        return self.attack.observe_round(view).poison_update(ctx.base_state, own, rng)


@dataclass(frozen=True)
class RushingJudge:
    """Judged rounds (learning.choice): an attacker's vote, the harness's strongest liar
    (learning.attacks.lie_votes). Every vote vector is gossiped, so a colluding judge can hold
    its own back until the honest judges' votes on the same update set are in, and then send
    the lie that makes the candidate holding the most colluders win (or, `target` "worst",
    the one the honest judges like least: plain harm). The driver waits
    (`ready`, up to a deadline) and publishes `lie` in place of the measured vote.

    Not written ahead: the lie depends on the honest votes seen, so a liar restarted
    mid-round may sign a second one (evidence against it; attack lab only)."""

    #: every colluder, itself included
    colluders: frozenset[str]
    #: what the lie backs (learning.attacks.LIAR_TARGETS)
    target: str = "colluders"

    @staticmethod
    def is_vote(action: Action) -> bool:
        return isinstance(action, Publish) and action.kind == "scores" and \
            isinstance(action.payload, dict) and "judged" in action.payload

    def honest_votes(self, ctx: RoundContext, payload: dict,
                     vectors: Mapping[tuple[str, tuple], bytes]) -> dict[str, tuple[float, ...]]:
        """The honest judges' votes held on the update set `payload` judged."""
        from chain.round_rules import parse_votes_body
        from gossip.envelope import decode_envelope

        updates = tuple((t, d) for t, d in payload["judged"])
        return {judge: parse_votes_body(ctx, decode_envelope(raw)).votes
                for (judge, judged), raw in vectors.items()
                if judged == updates and judge not in self.colluders}

    def ready(self, ctx: RoundContext, payload: dict,
              vectors: Mapping[tuple[str, tuple], bytes]) -> bool:
        """Whether every honest judge's vote on that set is in. (An honest leader waits for
        every member's vote until the propose deadline, so waiting costs the liar nothing;
        docs/learning.md, seventh pass, measured the first-quorum alternative.)"""
        honest = set(ctx.committee) - self.colluders
        return set(self.honest_votes(ctx, payload, vectors)) >= honest

    def blind_losses(self, ctx: RoundContext, updates: tuple[tuple[str, bytes], ...],
                     losses: list[float]) -> list[float]:
        """Pledged votes: the losses (base first) whose votes are the blind lie, made from our
        own measured votes alone (learning.choice.judge_votes inverted)."""
        from chain.round_rules import votes_payload
        from learning.choice import judge_votes

        own = votes_payload(dict(updates), list(judge_votes(losses[0], losses[1:])))
        lie = self.lie(ctx, own, {})["votes"]
        return [losses[0], *(losses[0] - v for v in lie)]

    def lie(self, ctx: RoundContext, payload: dict,
            vectors: Mapping[tuple[str, tuple], bytes]) -> dict:
        """The vote to send instead of `payload` (our measured vote stands in for the honest
        votes not yet seen)."""
        from chain.round_rules import judged_candidates, votes_payload
        from learning.attacks import lie_votes
        from learning.choice import choose

        updates = tuple((t, d) for t, d in payload["judged"])
        candidates = judged_candidates(ctx, updates)
        seen = self.honest_votes(ctx, payload, vectors) or {"own": tuple(payload["votes"])}
        config = ctx.selection.choice
        lie = lie_votes(seen, candidates, self.colluders,
                        lambda v: choose(v, len(candidates), config), self.target)
        return votes_payload(dict(updates), list(lie))
