"""The rules that turn a round's signed inputs into its block: the one place they are written.

The leader runs `derive_block` to propose; every other peer runs the same function on the score
vectors inside the proposal (or the committed block) and accepts only an identical result, so a
block is valid exactly when it re-derives from signed inputs.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from bft.messages import KINDS as PBFT_KINDS
from bft.quorum import fault_tolerance, quorum_size
import cbor2
from chain.block import Block, BlockError, MembershipChange, UpdateRef
from chain.membership import MembershipRules, Roster, derive_changes, join_requests
from gossip.envelope import Envelope, EnvelopeError, decode_envelope
from gossip.peer_record import RecordError, decode_record, is_peer_record, twin_records
from learning.cmfl import (
    RoundConfig,
    RoundSelection,
    elect_committee,
    find_dissenters,
    finish_round,
    select_round,
)
from learning.choice import (Candidate, candidate_count, candidate_inputs, candidate_models,
                             candidate_sets, choice_seed, choose)
from learning.compression import UpdateCodec
from learning.dp_accounting import DpPolicy, DpReport
from learning.dp_noise import noise_consistent
from learning.tensors import ModelState, state_hash


@dataclass(frozen=True)
class RoundContext:
    """What every peer knows at the start of a round, from its own chain and the genesis."""

    network_id: bytes
    height: int
    prev_hash: bytes
    members: tuple[str, ...]
    committee: tuple[str, ...]
    trainers: tuple[str, ...]
    base_state: ModelState
    base_hash: bytes
    #: the genesis `selection` settings (rule, fraction, scoring, election, outlier ratio)
    selection: RoundConfig = RoundConfig()
    #: members with recorded misbehaviour in the chain so far: never elected again
    excluded: frozenset[str] = frozenset()
    #: the DP-SGD the genesis demands of every update (`training.dp`), None without DP
    dp: DpPolicy | None = None
    #: the genesis membership rules, and the chain's roster (None: `members`, none silent)
    membership: MembershipRules = MembershipRules()
    roster: Roster | None = None
    #: who signs this round's commit certificate when it is not the committee (genesis
    #: `consensus = "members"`: the whole membership), empty for the committee
    validators: tuple[str, ...] = ()
    #: how updates travel (genesis `compression`): scoring and aggregation take each update as
    #: decoded against `base_state` (learning.compression), so every peer holds the same one
    codec: UpdateCodec = UpdateCodec()
    #: genesis `sealing = "validators"`: updates are sealed to `readers` (gossip.sealing)
    sealed: bool = False

    @property
    def readers(self) -> tuple[str, ...]:
        """Who may read this round's updates: on a sealed network its validators (they score
        it or re-derive its block), on any other every peer (empty: no list)."""
        return tuple(sorted(self.consensus_members)) if self.sealed else ()

    @property
    def consensus_members(self) -> tuple[str, ...]:
        """The members running pBFT on this round's block and signing its certificate."""
        return self.validators or self.committee

    @property
    def current_roster(self) -> Roster:
        """The roster this round starts from."""
        return self.roster if self.roster is not None else Roster(self.members)

    @property
    def leader(self) -> str:
        """The member who proposes this round's block."""
        return self.consensus_members[self.height % len(self.consensus_members)]

    @property
    def quorum(self) -> int:
        """Score vectors a block needs: a quorum of the committee (see `enough_score_vectors`
        for a committee with convicted members)."""
        return quorum_size(len(self.committee))

    def enough_score_vectors(self, senders: Collection[str], convicted: Collection[str]) -> bool:
        """Whether score vectors signed by `senders` are enough for this round's block whose
        evidence convicts `convicted` (equivocation or twin proofs, which no honest member can
        be given): a quorum of the committee, or a quorum of its unconvicted members from
        them alone. A convicted member that sits on the committee (block h records the proof
        and bars it from the next election, so block h-1's election may have seated it) need
        not be waited for: it withholds its vector, or peers ban its gossip, and the honest
        members' vectors are enough (docs/consensus.md, "Committee safety")."""
        signed = set(senders) & set(self.committee)
        if len(signed) >= self.quorum:
            return True
        clean = set(self.committee) - set(convicted)
        if not clean or clean == set(self.committee):
            return False
        return len(signed & clean) >= quorum_size(len(clean))


@dataclass(frozen=True)
class ReceivedUpdate:
    """A trainer's update as a peer holds it: who sent it, the envelope digest, and the model."""

    peer: str
    digest: bytes
    samples: int
    state: ModelState
    #: the DP parameters the update declared (checked by `update_dp`), None without DP
    dp: DpReport | None = None


class MissingUpdates(Exception):
    """The block cannot be re-derived yet: updates the new model depends on are not held."""

    def __init__(self, peers: list[str]) -> None:
        super().__init__(f"missing updates from {', '.join(p[-8:] for p in peers)}")
        self.peers = peers


def update_dp(ctx: RoundContext, body: dict, samples: int, state: ModelState) -> DpReport | None:
    """The DP parameters of an update body (its optional "dp" entry), checked against what the
    genesis demands; ValueError says why they are refused.

    On a DP network every update must declare the genesis' parameters, and hold at least the
    noise they imply (`noise_consistent`): declaring noise one did not add would otherwise buy
    a smaller noise-debiased distance. Without DP, an update declares none."""
    if ctx.dp is None:
        if "dp" in body:
            raise ValueError("DP parameters on a network without DP (no genesis training.dp)")
        return None
    if "dp" not in body:
        raise ValueError("the genesis requires DP-SGD and the update declares no DP parameters")
    report = DpReport.from_dict(body["dp"], check=False)
    ctx.dp.check(report, samples)
    if not noise_consistent(ctx.base_state, state, ctx.dp.noise_variance(report, samples)):
        raise ValueError("update too small to hold the DP noise it declares")
    return report


def check_recorded_dp(ctx: RoundContext, refs: tuple[UpdateRef, ...]) -> None:
    """Raise BlockError unless every update reference records DP parameters exactly when the
    genesis demands DP, and those the genesis demands (for a syncing verifier: the rest of
    `update_dp` needs the update itself)."""
    for ref in refs:
        if ctx.dp is None and ref.dp is not None:
            raise BlockError(f"update of {ref.peer[-8:]} records DP parameters on a network "
                             f"without DP")
        if ctx.dp is not None and ref.dp is None:
            raise BlockError(f"update of {ref.peer[-8:]} records no DP parameters; the genesis "
                             f"requires DP")
        if ctx.dp is not None and ref.dp is not None:
            try:
                ctx.dp.check(ref.dp, ref.samples)
            except ValueError as exc:
                raise BlockError(f"update of {ref.peer[-8:]}: {exc}") from None


def trainers_for(members: tuple[str, ...], committee: tuple[str, ...],
                 judged: bool = False) -> tuple[str, ...]:
    """A round's trainers: every current member (the chain's roster, chain.membership) not on
    its committee, in id order; in judged rounds every member (each also judges)."""
    if judged:
        return tuple(sorted(members))
    return tuple(sorted(set(members) - set(committee)))


def scores_payload(scores: dict[str, tuple[bytes, float]]) -> dict:
    """The body of a `scores` message: per trainer, the update digest scored and its distance."""
    return {"scores": [[t, d, float(s)] for t, (d, s) in sorted(scores.items())]}


def parse_score_vector(ctx: RoundContext, raw: bytes) -> tuple[str, dict[str, tuple[bytes, float]]]:
    """Check one signed score vector for this round; BlockError names what is wrong."""
    env = decode_vector(ctx, raw)
    return env.sender, parse_scores_body(ctx, env)


def decode_vector(ctx: RoundContext, raw: bytes) -> Envelope:
    """A signed score or vote vector of this round from a committee member (its body not yet
    read); BlockError names what is wrong."""
    try:
        env = decode_envelope(raw)
    except EnvelopeError as exc:
        raise BlockError(f"score vector: {exc}") from None
    if env.kind != "scores" or env.network_id != ctx.network_id or env.round != ctx.height:
        raise BlockError("score vector is not a scores message of this round")
    if env.sender not in ctx.committee:
        raise BlockError(f"score vector from non-committee peer {env.sender[-8:]}")
    if not env.has_valid_signature():
        raise BlockError(f"score vector of {env.sender[-8:]} has a forged signature")
    return env


def parse_vector_body(ctx: RoundContext, env: Envelope) -> dict[str, tuple[bytes, float]] | VoteVector:
    """A scores message's body as this round reads it: a score vector (trainer -> (digest,
    distance)) in scored rounds, a vote vector in judged ones; BlockError if malformed."""
    if ctx.selection.judged:
        return parse_votes_body(ctx, env)
    return parse_scores_body(ctx, env)


def parse_scores_body(ctx: RoundContext, env: Envelope) -> dict[str, tuple[bytes, float]]:
    """The trainer -> (digest, distance) map of a scores message; BlockError if malformed."""
    body = env.payload
    if not isinstance(body, dict) or not isinstance(body.get("scores"), list):
        raise BlockError("scores body is not a list")
    out: dict[str, tuple[bytes, float]] = {}
    for item in body["scores"]:
        if not (isinstance(item, list) and len(item) == 3):
            raise BlockError("scores entry is not [trainer, digest, distance]")
        trainer, digest, dist = item
        if trainer not in ctx.trainers or trainer in out:
            raise BlockError("scores name a non-trainer or a trainer twice")
        if not isinstance(digest, bytes) or len(digest) != 32:
            raise BlockError("scores entry has a bad digest")
        if not isinstance(dist, (int, float)) or not math.isfinite(dist) or dist < 0:
            raise BlockError("scores entry has a bad distance")
        out[trainer] = (digest, float(dist))
    return out


#: The lowest vote on the wire: a judge whose loss on a candidate is not finite votes this
#: (the profile carries finite floats only; learning.choice counts it as the worst vote).
WORST_VOTE = -1e30


@dataclass(frozen=True)
class VoteVector:
    """A judge's signed vote (judged rounds, learning.choice): the updates it judged, as
    (trainer, envelope digest) in trainer order, and per candidate of those updates how much
    that candidate lowers the loss on its own data."""

    updates: tuple[tuple[str, bytes], ...]
    votes: tuple[float, ...]
    #: pledged votes (genesis `selection.choice.pledged`): the secret its pledge hashed, and
    #: the pledges on this update set its judge held when it revealed, as (judge, pledge)
    salt: bytes = b""
    seen: tuple[tuple[str, bytes], ...] = ()
    #: ... and the pledge these votes and salt open (pledge_digest), computed once
    pledge: bytes = b""


def votes_payload(updates: dict[str, bytes], votes: list[float]) -> dict:
    """The body of a judge's `scores` message: the judged updates and its vote per candidate
    (a non-finite vote sent as WORST_VOTE)."""
    return {"judged": [[t, d] for t, d in sorted(updates.items())],
            "votes": [float(v) if math.isfinite(v) else WORST_VOTE for v in votes]}


#: Pledged votes: the length of a judge's secret salt, and the hash's personalisation.
SALT_BYTES = 16
PLEDGE_PERSON = b"cmfl-vote-pledge"


def pledge_digest(ctx: RoundContext, judge: str, updates: tuple[tuple[str, bytes], ...],
                  votes: Iterable[float], salt: bytes) -> bytes:
    """What a judge pledges before it reveals its votes: BLAKE2b-256 (person
    "cmfl-vote-pledge") of the canonical CBOR array [network id, height, judge, judged
    updates, votes as sent, salt]. The salt keeps the votes secret until the reveal."""
    data = cbor2.dumps([ctx.network_id, ctx.height, judge, [[t, d] for t, d in updates],
                        [float(v) for v in votes], salt], canonical=True)
    return hashlib.blake2b(data, digest_size=32, person=PLEDGE_PERSON).digest()


def pledge_payload(updates: tuple[tuple[str, bytes], ...], pledge: bytes) -> dict:
    """The body of a judge's `pledge` message."""
    return {"judged": [[t, d] for t, d in updates], "pledge": pledge}


def reveal_payload(updates: tuple[tuple[str, bytes], ...], votes: list[float], salt: bytes,
                   seen: dict[str, bytes]) -> dict:
    """The body of a pledged judge's `scores` message: its votes (exactly as pledged), its
    salt, and every pledge on this update set it holds as it reveals."""
    body = votes_payload(dict(updates), votes)
    body["salt"] = salt
    body["seen"] = [[judge, pledge] for judge, pledge in sorted(seen.items())]
    return body


def _parse_judged(ctx: RoundContext, items: Any) -> tuple[tuple[str, bytes], ...]:
    if not isinstance(items, list):
        raise BlockError("judged updates are not a list")
    updates = []
    for item in items:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
            raise BlockError("judged entry is not [trainer, digest]")
        trainer, digest = item
        if trainer not in ctx.trainers:
            raise BlockError("vote names a non-trainer")
        if not isinstance(digest, bytes) or len(digest) != 32:
            raise BlockError("judged entry has a bad digest")
        updates.append((trainer, digest))
    if [t for t, _ in updates] != sorted({t for t, _ in updates}):
        raise BlockError("judged updates are not in trainer order, each once")
    return tuple(updates)


def parse_pledge_body(ctx: RoundContext, env: Envelope) -> tuple[tuple[tuple[str, bytes], ...], bytes]:
    """A judge's pledge: (the updates it judged, its 32-byte pledge); BlockError if malformed
    or if this network's judges do not pledge."""
    if not (ctx.selection.choice is not None and ctx.selection.choice.pledged):
        raise BlockError("this network's judges do not pledge (genesis selection.choice)")
    body = env.payload
    if not isinstance(body, dict) or set(body) != {"judged", "pledge"}:
        raise BlockError("pledge body is not {judged, pledge}")
    if not isinstance(body["pledge"], bytes) or len(body["pledge"]) != 32:
        raise BlockError("pledge is not 32 bytes")
    return _parse_judged(ctx, body["judged"]), body["pledge"]


def counted_votes(ctx: RoundContext, vectors: dict[str, VoteVector]) -> set[str]:
    """The judges whose votes count, of `vectors` (all on one update set). Without pledges,
    all. With pledges, a judge's votes count only if at least len(vectors) - f of the reveals
    list its pledge, and its reveal opens that pledge (f: the faults the members tolerate).
    At most f reveals are a liar's, so at least len(vectors) - 2f honest judges held a
    counted liar's pledge before revealing: it cannot have read their votes first. Honest
    judges list each other's pledges (they reveal once every member's pledge is in, or at
    the reveal deadline), so their votes count."""
    if not (ctx.selection.choice is not None and ctx.selection.choice.pledged):
        return set(vectors)
    need = len(vectors) - fault_tolerance(len(ctx.committee))
    listed = Counter(pair for vector in vectors.values() for pair in vector.seen)
    return {judge for judge, v in vectors.items() if listed[(judge, v.pledge or pledge_digest(
        ctx, judge, v.updates, v.votes, v.salt))] >= need}


def counted_senders(ctx: RoundContext, vectors: dict[str, bytes],
                    parsed: dict[bytes, VoteVector] | None = None) -> set[str]:
    """`counted_votes` of signed vote vectors (already checked), by judge; `parsed` caches
    the parsed vectors by their bytes across calls (the round core asks on every input)."""
    if not (ctx.selection.choice is not None and ctx.selection.choice.pledged):
        return set(vectors)
    cache = parsed if parsed is not None else {}
    for raw in vectors.values():
        if raw not in cache:
            cache[raw] = parse_votes_body(ctx, decode_envelope(raw))
    return counted_votes(ctx, {j: cache[raw] for j, raw in vectors.items()})


def judged_candidates(ctx: RoundContext, updates: tuple[tuple[str, bytes], ...]
                      ) -> list[Candidate]:
    """The round's candidates over these updates: identical on every peer (the seed is the
    round, the previous block and the updates' envelope digests: learning.choice)."""
    assert ctx.selection.choice is not None
    seed = choice_seed(ctx.height, ctx.prev_hash, [d for _, d in updates])
    return candidate_sets([t for t, _ in updates], seed, ctx.selection.choice)


def parse_votes_body(ctx: RoundContext, env: Envelope) -> VoteVector:
    """A judge's vote vector; BlockError if malformed: trainers of this round in order, each
    once, with 32-byte digests, and one finite vote per candidate of those updates; on a
    pledged network also its salt and the pledges it saw (judges in order, each once)."""
    assert ctx.selection.choice is not None
    pledged = ctx.selection.choice.pledged
    keys = {"judged", "votes", "salt", "seen"} if pledged else {"judged", "votes"}
    body = env.payload
    if not isinstance(body, dict) or set(body) != keys or not isinstance(body["votes"], list):
        raise BlockError(f"vote body is not {{{', '.join(sorted(keys))}}}")
    updates = _parse_judged(ctx, body["judged"])
    count = candidate_count(len(updates), ctx.selection.choice)
    votes = body["votes"]
    if len(votes) != count:
        raise BlockError(f"{len(votes)} votes for {count} candidates")
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
           for v in votes):
        raise BlockError("a vote is not a finite number")
    if not pledged:
        return VoteVector(updates, tuple(float(v) for v in votes))
    salt, seen = body["salt"], body["seen"]
    if not isinstance(salt, bytes) or len(salt) != SALT_BYTES:
        raise BlockError(f"salt is not {SALT_BYTES} bytes")
    if not isinstance(seen, list) or not all(
            isinstance(i, list) and len(i) == 2 and i[0] in ctx.committee and
            isinstance(i[1], bytes) and len(i[1]) == 32 for i in seen):
        raise BlockError("seen is not a list of [judge, 32-byte pledge]")
    if [j for j, _ in seen] != sorted({j for j, _ in seen}):
        raise BlockError("seen pledges are not in judge order, each once")
    floats = tuple(float(v) for v in votes)
    return VoteVector(updates, floats, salt, tuple((j, p) for j, p in seen),
                      pledge_digest(ctx, env.sender, updates, floats, salt))


#: Vote vectors a judge signs in one round, at most: its own, and one on the update set other
#: judges voted on if its own finds no quorum (a late update split the judges: `judged_group`).
MAX_VOTE_SETS = 2


def judged_group(ctx: RoundContext, vectors: Iterable[tuple[str, tuple, bytes]],
                 parsed: dict[bytes, VoteVector] | None = None) -> dict[str, bytes]:
    """Of the vote vectors held, as (judge, the update set it judged, signed bytes), each
    already checked (a judge may have voted on up to MAX_VOTE_SETS sets), those a block can be
    built from, by judge: votes on different sets are votes on different candidates, so one
    set's. The largest set that has a quorum of votes (an update some judges lacked is left
    out only if those with it are too few), else the set most judges voted on (ties: the
    larger set, then the smaller digest list)."""
    groups: dict[tuple, dict[str, bytes]] = {}
    for member, updates, raw in vectors:
        groups.setdefault(updates, {})[member] = raw
    if not groups:
        return {}
    enough = [u for u in groups
              if ctx.enough_score_vectors(counted_senders(ctx, groups[u], parsed), ())]
    if enough:
        return groups[min(enough, key=lambda u: (-len(u), u))]
    return groups[min(groups, key=lambda u: (-len(groups[u]), -len(u), u))]


@dataclass(frozen=True)
class RoundOutline:
    """All that a round's signed score vectors and evidence decide, before any update is needed:
    everything in its block but the new model (what a syncing peer can check without updates)."""

    #: trainers every vector scored with one same update digest, and that digest
    digests: dict[str, bytes]
    selection: RoundSelection
    #: the evidence as the block records it (sorted, without duplicates)
    evidence: tuple[tuple[bytes, bytes], ...]
    next_committee: tuple[str, ...]
    #: admissions (of the join requests given) and departures, as the block records them
    membership: tuple[MembershipChange, ...] = ()
    #: judged rounds: the candidate the votes chose (its trainers are `selection.selected`)
    candidate: Candidate | None = None


def outline_round(ctx: RoundContext, score_vectors: list[bytes],
                  evidence: tuple[tuple[bytes, bytes], ...] = (),
                  joins: tuple[bytes, ...] = ()) -> RoundOutline:
    """Check the signed score vectors, evidence and join requests; select, elect and derive the
    membership changes. BlockError if invalid."""
    if ctx.selection.judged:
        return outline_judged(ctx, score_vectors, evidence, joins)
    vectors: dict[str, dict[str, tuple[bytes, float]]] = {}
    for raw in score_vectors:
        member, scores = parse_score_vector(ctx, raw)
        if member in vectors:
            raise BlockError(f"two score vectors from {member[-8:]}")
        vectors[member] = scores
    evidence, offenders = _checked_evidence(ctx, evidence)
    if not ctx.enough_score_vectors(vectors, offenders):
        raise BlockError(f"{len(vectors)} score vectors, a quorum is {ctx.quorum} (or of the "
                         "committee members this block's evidence does not convict)")

    digests = agreed_digests(vectors, ctx.trainers)
    # The learning decision is learning.cmfl's, the same code the robustness harness runs.
    selection = select_round(distances(vectors, digests), ctx.selection)
    next_committee = elect_committee(selection, len(ctx.committee), ctx.committee,
                                     ctx.selection, ctx.excluded | offenders)
    # A trainer no vector names is silent this round: too many such rounds and it leaves.
    named = {t for scores in vectors.values() for t in scores}
    membership = derive_changes(ctx.membership, ctx.current_roster, ctx.network_id, ctx.height,
                                ctx.committee, ctx.trainers, named, joins)
    return RoundOutline(digests, selection, evidence, tuple(sorted(next_committee)), membership)


def _checked_evidence(ctx: RoundContext, evidence: tuple[tuple[bytes, bytes], ...]
                      ) -> tuple[tuple[tuple[bytes, bytes], ...], set[str]]:
    evidence = tuple(sorted(set(evidence)))
    if len(evidence) > MAX_EVIDENCE_PER_BLOCK:
        raise BlockError(f"{len(evidence)} evidence entries, at most {MAX_EVIDENCE_PER_BLOCK}")
    return evidence, {check_evidence(ctx.network_id, pair) for pair in evidence}


def outline_judged(ctx: RoundContext, score_vectors: list[bytes],
                   evidence: tuple[tuple[bytes, bytes], ...] = (),
                   joins: tuple[bytes, ...] = ()) -> RoundOutline:
    """A judged round's outline: a quorum of vote vectors on one update set, the candidate
    their votes choose (learning.choice.choose), whose trainers are the selected ones.
    BlockError if invalid."""
    assert ctx.selection.choice is not None
    vectors: dict[str, VoteVector] = {}
    for raw in score_vectors:
        env = decode_vector(ctx, raw)
        if env.sender in vectors:
            raise BlockError(f"two vote vectors from {env.sender[-8:]}")
        vectors[env.sender] = parse_votes_body(ctx, env)
    sets = {v.updates for v in vectors.values()}
    if len(sets) > 1:
        raise BlockError("vote vectors judge different update sets")
    evidence, offenders = _checked_evidence(ctx, evidence)
    counted = counted_votes(ctx, vectors)
    if not ctx.enough_score_vectors(counted, offenders):
        raise BlockError(f"{len(counted)} counted vote vectors (of {len(vectors)}), a quorum "
                         f"is {ctx.quorum} (or of the members this block's evidence does not "
                         "convict)")
    updates = sets.pop()
    candidates = judged_candidates(ctx, updates)
    best = candidates[choose({m: v.votes for m, v in vectors.items() if m in counted},
                             len(candidates), ctx.selection.choice)]
    selection = RoundSelection(combined={}, selected=best.trainers, applied=f"choice:{best.kind}")
    named = {t for t, _ in updates}
    # Every member is on this committee; no seat keeps a silent member in (`departures` counts
    # the trainers it may let go against the committee, so it is given none).
    membership = derive_changes(ctx.membership, ctx.current_roster, ctx.network_id, ctx.height,
                                (), ctx.trainers, named, joins)
    return RoundOutline(dict(updates), selection, evidence, tuple(sorted(ctx.committee)),
                        membership, best)


#: Largest sample count a valid update carries (the round core refuses larger ones).
MAX_SAMPLES = 2**40


def check_outline(ctx: RoundContext, block: Block) -> RoundOutline:
    """Raise BlockError unless everything `block` records but its new model follows from its
    signed score vectors, evidence and join requests in this round's context: what a peer that
    holds no update (chain.verify, a sync, a non-reader of a sealed network) checks, besides
    the certificate."""
    if block.committee != ctx.committee:
        raise BlockError("committee is not the one the previous block elected")
    if block.trainers != ctx.trainers:
        raise BlockError("trainers are not the members off the committee")
    if block.score_vectors != tuple(sorted(block.score_vectors)):
        raise BlockError("score vectors are not in canonical order")
    outline = outline_round(ctx, list(block.score_vectors), block.evidence,
                            join_requests(block))
    if block.evidence != outline.evidence:
        raise BlockError("evidence is not sorted and unique")
    if block.selected != outline.selection.selected:
        raise BlockError("selected trainers do not follow from the score vectors")
    refs = [(u.peer, u.digest) for u in block.updates]
    if refs != [(t, outline.digests[t]) for t in outline.selection.selected]:
        raise BlockError("update references are not the selected, scored updates")
    if any(not 0 < u.samples < MAX_SAMPLES for u in block.updates):
        raise BlockError("an update reference has an impossible sample count")
    check_recorded_dp(ctx, block.updates)
    if block.next_committee != outline.next_committee:
        raise BlockError("next committee does not follow the election rule")
    if block.membership != outline.membership:
        raise BlockError("membership changes are not the admissions of the block's join "
                         "requests and the departures its chain implies")
    return outline


def derive_block(
    ctx: RoundContext, score_vectors: list[bytes], updates: dict[str, ReceivedUpdate],
    evidence: tuple[tuple[bytes, bytes], ...] = (), joins: tuple[bytes, ...] = (),
) -> tuple[Block, ModelState]:
    """The block and new global model that these score vectors (and evidence and join
    requests) imply.

    Raises BlockError if the inputs are invalid (then no block can come of them) and
    MissingUpdates if an update the new model depends on (a selected one, or with clipped subsets
    every judged one) is not in `updates` (then wait for it).
    """
    outline = outline_round(ctx, score_vectors, evidence, joins)
    digests, selection, evidence = outline.digests, outline.selection, outline.evidence
    selected = list(selection.selected)

    held = {t: u for t, u in updates.items() if t in digests and u.digest == digests[t]}
    # what the new model depends on: the selected updates, or every judged one for a subset of
    # clipped updates (learning.choice.candidate_inputs)
    inputs = selected if outline.candidate is None else \
        list(candidate_inputs(outline.candidate, list(digests), ctx.selection.choice))
    missing = [t for t in inputs if t not in held]
    if missing:
        raise MissingUpdates(missing)
    if outline.candidate is not None:  # judged: the chosen candidate's model
        new_state = candidate_models(ctx.base_state, {t: held[t].state for t in inputs},
                                     {t: held[t].samples for t in inputs}, [outline.candidate],
                                     ctx.selection.choice)[0]
    else:
        # Only the aggregate is taken from finish_round: the next committee is the outline's,
        # so the proposer and a syncing verifier (chain.verify, which has no updates) share one
        # election.
        new_state = finish_round(ctx.base_state, selection, {t: held[t].state for t in selected},
                                 {t: held[t].samples for t in selected}, len(ctx.committee),
                                 ctx.committee, ctx.selection, ctx.excluded).new_state
    next_committee = outline.next_committee
    # Only aggregated updates are listed: every peer that re-derives holds exactly these, and their
    # sample counts and DP parameters are bound by the digest (they are inside the signed update).
    refs = tuple(UpdateRef(t, digests[t], held[t].samples, held[t].dp) for t in selected)
    block = Block(
        height=ctx.height, prev_hash=ctx.prev_hash, network_id=ctx.network_id,
        committee=ctx.committee, trainers=ctx.trainers, updates=refs,
        score_vectors=tuple(sorted(score_vectors)), selected=tuple(selected),
        model_hash=state_hash(new_state), next_committee=tuple(sorted(next_committee)),
        membership=outline.membership, evidence=evidence)
    return block, new_state


#: Kinds of which two different signed messages of one sender and round prove misbehaviour
#: besides the pBFT kinds (which must also share a view): an honest peer writes its update and
#: its score vector ahead (p2p_node.node, `_publish`) and never signs a second in one round.
ROUND_EVIDENCE_KINDS = ("update", "scores", "pledge")
#: Bounds that keep a block (gossiped inside one envelope) small whatever evidence is held.
MAX_EVIDENCE_MESSAGE_BYTES = 64 * 1024
MAX_EVIDENCE_PER_BLOCK = 4


def check_evidence(network_id: bytes, pair: tuple[bytes, bytes]) -> str:
    """The member a misbehaviour proof convicts; BlockError unless the proof holds.

    A proof is two different messages, both validly signed by the same member, that an honest
    member never signs: two pBFT messages of one kind, height and view (its write-ahead record
    forbids it), two updates or two score vectors of one round (written ahead too), or two
    address records with one sequence number (gossip.peer_record: a twin, two processes with
    one key). Each message is at most MAX_EVIDENCE_MESSAGE_BYTES.
    """
    if any(len(raw) > MAX_EVIDENCE_MESSAGE_BYTES for raw in pair):
        raise BlockError(f"evidence message over {MAX_EVIDENCE_MESSAGE_BYTES} bytes")
    if is_peer_record(pair[0]):
        try:
            return twin_records(network_id, pair)
        except RecordError as exc:
            raise BlockError(f"twin evidence: {exc}") from None
    try:
        a, b = (decode_envelope(raw) for raw in pair)
    except EnvelopeError as exc:
        raise BlockError(f"evidence: {exc}") from None
    if a.kind not in PBFT_KINDS + ROUND_EVIDENCE_KINDS or (
            a.kind, a.round, a.sender, a.network_id) != (
            b.kind, b.round, b.sender, b.network_id) or a.network_id != network_id:
        raise BlockError("evidence messages are not of one kind, height and member")
    if a.kind in PBFT_KINDS:
        views = [e.payload.get("view") if isinstance(e.payload, dict) else None for e in (a, b)]
        if views[0] is None or views[0] != views[1]:
            raise BlockError("evidence messages are not of one view")
    if a.signing_bytes() == b.signing_bytes():
        raise BlockError("evidence messages do not conflict")
    if a.kind in ("scores", "pledge") and _judged_set(a) is not None and \
            _judged_set(a) != _judged_set(b):
        # a judge may vote once per update set (MAX_VOTE_SETS): only two votes on one conflict
        raise BlockError("vote vectors on different update sets do not conflict")
    if not (a.has_valid_signature() and b.has_valid_signature()):
        raise BlockError("evidence message with a forged signature")
    return a.sender


def _judged_set(env: Envelope) -> Any:
    """The update set a vote vector names (None: not a vote vector)."""
    body = env.payload
    return body.get("judged") if isinstance(body, dict) else None


def evidence_member(raw: bytes) -> str:
    """Who the first message of a recorded (already checked) proof was signed by."""
    return decode_record(raw).peer_id if is_peer_record(raw) else decode_envelope(raw).sender


def recorded_misbehaviour(block: Block, selection: RoundConfig) -> set[str]:
    """Members a committed block convicts: the signers its evidence convicts (equivocation,
    twins), and committee members whose score vector contradicted the others'
    (learning.cmfl.find_dissenters)."""
    offenders = {evidence_member(pair[0]) for pair in block.evidence}
    if selection.judged:  # votes cannot be checked against each other: only proofs convict
        return offenders
    vectors = {}
    for raw in block.score_vectors:
        env = decode_envelope(raw)
        vectors[env.sender] = {t: (d, float(s)) for t, d, s in env.payload["scores"]}
    common = distances(vectors, agreed_digests(vectors, block.trainers))
    return offenders | set(find_dissenters(common, selection.outlier_ratio))


def agreed_digests(vectors: dict[str, dict[str, tuple[bytes, float]]],
                   trainers: tuple[str, ...]) -> dict[str, bytes]:
    """Trainers every vector scored with one same update digest, and that digest.

    A trainer that sent different updates to different members (equivocation) is left out
    rather than guessed about."""
    digests: dict[str, bytes] = {}
    for trainer in trainers:
        seen = {v[trainer][0] for v in vectors.values() if trainer in v}
        if len(seen) == 1 and all(trainer in v for v in vectors.values()):
            digests[trainer] = seen.pop()
    return digests


def distances(vectors: dict[str, dict[str, tuple[bytes, float]]],
              digests: dict[str, bytes]) -> dict[str, dict[str, float]]:
    """Each member's distances to the agreed trainers, members in id order."""
    return {m: {t: v[t][1] for t in digests} for m, v in sorted(vectors.items())}
