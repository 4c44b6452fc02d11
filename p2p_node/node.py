"""The peer process's driver: moves bytes between libp2p and the round core, trains, stores.

Protocol rules live in RoundMachine and chain.round_rules; this module only carries out what they
decide: publish, train in a worker thread, fire deadlines, write committed blocks to disk.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import cbor2
import multiaddr
import numpy as np
import torch
import trio
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.pb import rpc_pb2

from chain.genesis import Genesis
from chain.membership import MembershipRules
from chain.round_rules import SALT_BYTES, RoundContext
from chain.store import BlockStore, ModelStore, retain_checkpoints
from chain.verify import ChainVerifier
from gossip.envelope import MAX_ENVELOPE_BYTES, Envelope, decode_envelope
from gossip.peer_record import RecordSigner
from gossip.sealing import SealKey
from gossip.transfer import BlobServer, BlobSources, BlobStore, TransferError, fetch_blob
from gossip.validation import EnvelopeAdmission
from learning.attacks import Attack, make_attack
from learning.cmfl import RoundConfig
from learning.builtin_tasks import DigitsTask
from learning.data import Dataset
from learning.task import (Task, TaskError, check_pinned, demo_shard, load_task, num_classes,
                           split_held_out)
from learning.privacy import (
    DpPolicy,
    DpReport,
    PrivacyAccountant,
    check_dp_model,
    round_epsilon,
    train_local_dp,
)
from learning.tensors import ModelState, state_bytes, state_from_bytes, state_hash
from p2p_node.federated_eval import FederatedEvaluation, ReportError, report_payload
from gossip.peer_scoring import report_verdict
from p2p_node.attack_lab import OmniscientColluder, RushingJudge, attack_filter
from p2p_node.config import NodeConfig
from p2p_node.discovery import Discovery
from p2p_node.round_core import (
    RELAYED_TOPICS,
    TOPIC_KINDS,
    Convicted,
    RoundCore,
    ServeFailed,
    TwinSeen,
    topic_of,
)
from p2p_node.host import HEARTBEAT_SECONDS, running_host
from p2p_node.identity import load_identity
from p2p_node.sync_service import CheckpointSource, SyncService
from p2p_node.traffic import TrafficLedger
from p2p_node.round_machine import (
    PERSISTED_KEYS,
    BlobArrived,
    Commit,
    FetchBlob,
    FetchModel,
    HintBehind,
    Judge,
    Judged,
    ModelArrived,
    OfferBlob,
    Persist,
    Publish,
    PublishSigned,
    Received,
    Rejected,
    RoundMachine,
    SetTimer,
    TimerFired,
    Trained,
    Withheld,
)

if TYPE_CHECKING:
    from p2p_node.collusion import CollusionChannel

log = logging.getLogger("p2p_node")
#: how far the repeat of unchanged own messages backs off (Node._rebroadcast): at most this
#: many times --rebroadcast-interval between repeats
REBROADCAST_BACKOFF = 8

@dataclass(frozen=True)
class Synced:
    """The sync watch fetched and verified blocks past our round (chain.sync result)."""

    result: Any


def topic_name(network_id: bytes, topic: str) -> str:
    return f"/cmfl/{network_id.hex()[:16]}/{topic}"


@dataclass
class RoundTimes:
    """When the stages of one round ended, seconds since the round began."""

    started: float
    marks: dict[str, float] = field(default_factory=dict)

    def mark(self, stage: str) -> None:
        self.marks.setdefault(stage, time.monotonic() - self.started)


def open_chain(data_dir: Path) -> tuple[BlockStore, ModelStore]:
    return BlockStore(data_dir / "chain.sqlite"), ModelStore(data_dir / "models")


class Node:
    """One peer: identity, chain, private data, and the round loop over libp2p."""

    def __init__(self, config: NodeConfig, on_event: Callable[[dict], None] | None = None):
        self.config = config
        self.signer = load_identity(config.data_dir)
        self.me = self.signer.peer_id
        self.genesis = Genesis.load(config.genesis_file)
        self.network_id = self.genesis.network_id
        self.membership = MembershipRules.from_settings(self.genesis.membership,
                                                        self.genesis.members)
        if self.me not in self.genesis.members and not self.membership.admits(self.me):
            raise ValueError(f"this peer ({self.me}) is not a member in {config.genesis_file}, "
                             f"and its {self.membership.admission} admission policy does not "
                             "let it join")
        self.store, self.models = open_chain(config.data_dir)
        #: where our own chain stands (chain.position: members, committee, convicted members),
        #: advanced as blocks are stored; the sync service starts its sessions from it too
        self.chain_state = ChainVerifier(self.genesis)
        self.task = self._load_task()
        #: what DP training builds models from: the MLP's spec for digits (as before tasks)
        self.spec: Any = self.task.spec if type(self.task) is DigitsTask else self.task
        self.selection = RoundConfig.from_selection(self.genesis.selection)
        #: the DP-SGD every peer trains with (genesis training.dp), None without DP
        self.dp = DpPolicy.from_training(self.genesis.training)
        if self.dp is not None:  # refused at start, not as a crash in the first round
            check_dp_model(self.task.model(0), f"task {self.task.name!r}")
        #: height -> (noise_multiplier, sample_rate, steps) of the DP training spent there
        self._privacy_spent: dict[int, tuple[float, float, int]] = {}
        self.privacy = self._load_privacy()
        self.attack: Attack | None = make_attack(config.attack)
        #: the attack lab's filter over the core's actions (--byzantine, a score-lying
        #: --attack), None for an honest peer
        self.misbehaviour = attack_filter(config.byzantine, self.attack,
                                          frozenset(config.colluders) | {self.me})
        #: the attack lab's lying judge (judged rounds, any --attack with colluders: it waits
        #: for the honest votes, then sends the vote that best helps the colluders)
        self.rushing_judge = RushingJudge(frozenset(config.colluders) | {self.me},
                                          config.liar_target) \
            if self.attack is not None and config.colluders else None
        #: the attack lab's omniscient colluder (an omniscient --attack: it crafts from the
        #: round's gossiped honest updates), None for every other peer
        self.collusion: CollusionChannel | None = None
        colluder = OmniscientColluder.for_peer(self.attack, self.me, config.colluders,
                                               config.collect_timeout)
        if colluder is not None:
            from p2p_node.collusion import CollusionChannel

            self.collusion = CollusionChannel(colluder)
        #: own training data, own held-out data (federated evaluation) and, in the demo, the
        #: bundled data set's global test split (None with --data)
        self.train_data, self.held_out, self.test_data = self._load_data()
        self.federated = FederatedEvaluation(self.task.worse)
        self.chain_state.follow(self.store)  # a restarted peer knows who was admitted since
        self.admission = EnvelopeAdmission(self.network_id, frozenset(self.chain_state.members),
                                           joiners=self.membership.joiners())
        #: the protocol state across rounds (evidence, joins, later rounds' messages) and the
        #: current round's machine
        self.core = RoundCore(self.network_id, self.me, self.membership, config.timeouts,
                              seal_key=SealKey(self.signer))
        self.discovery: Discovery | None = None
        self.on_event = on_event or (lambda e: None)
        self.rejections: dict[str, int] = defaultdict(int)
        #: bytes moved this round and in total (p2p_node/traffic.py says what is counted)
        self.traffic = TrafficLedger()
        self._own_messages: list[tuple[str, bytes]] = []
        #: large updates (ours and those we fetched), served to peers over /cmfl/blob/1;
        #: kept for this round and the one before (a lagging peer may still need them)
        self.blobs = BlobStore(max_bytes=1024 * 1024 * 1024)
        self._blobs_by_round: dict[int, list[bytes]] = defaultdict(list)
        self._pubsub: Any = None
        self._inbox_send, self._inbox = trio.open_memory_channel[Any](100_000)
        self.host: Any = None
        self.router: Any = None  # gossip.round_gossip.RoundScopedGossipSub: penalize, enter_round

    # set-up ------------------------------------------------------------------------------------
    def _load_task(self) -> Task:
        """The genesis's task, from --task or the name it pins; refused unless its source hash
        is the one pinned."""
        g, ref = self.genesis, self.config.task
        if not g.task:  # a genesis from before tasks: the digits MLP
            if ref not in (None, "digits"):
                raise TaskError(f"the genesis pins no task (it trains the digits MLP), but "
                                f"this peer was given --task {ref}")
            return DigitsTask(g.model)
        task = load_task(ref or g.task["name"], g.model)
        check_pinned(task, g.task, f"this peer (task {ref or g.task['name']!r})")
        return task

    def _load_data(self) -> tuple[Dataset, Dataset, Dataset | None]:
        g, data = self.genesis, self.genesis.data
        members = sorted(g.members)
        count = self.config.num_shards or len(members)
        if self.config.shard_index is not None:
            index = self.config.shard_index
        elif self.me in members:
            index = members.index(self.me)
        else:
            # A joiner with no --shard-index shares a founder's shard, picked by its peer id.
            index = int.from_bytes(hashlib.sha256(self.me.encode()).digest()[:4], "big") % count
        if self.config.data is not None:
            own = self.task.read_file(self.config.data)
            local, held_out = split_held_out(own, g.seed ^ index)
            test = None
            log.info("data: %d own rows from %s (%d trained on, %d held out for federated "
                     "evaluation)", len(own), self.config.data, len(local), len(held_out))
        else:
            local, held_out, test = demo_shard(self.task, g.seed, data, count, index)
        if self.attack is not None:
            if hasattr(self.attack, "num_classes"):  # flip labels within the task's classes
                self.attack = replace(self.attack, num_classes=num_classes(self.task, local))
            local = self.attack.poison_data(local, np.random.default_rng([g.seed, index]))
        self.shard_index = index
        return local, held_out, test

    def _load_privacy(self) -> PrivacyAccountant | None:
        """This peer's privacy budget so far, from its store: it must survive restarts."""
        if self.dp is None:
            return None
        raw = self.store.get_state("privacy")
        self._privacy_spent = {int(h): (float(s), float(q), int(t))
                               for h, (s, q, t) in (cbor2.loads(raw) if raw else {}).items()}
        return PrivacyAccountant(self.dp.accountant,
                                 [self._privacy_spent[h] for h in sorted(self._privacy_spent)])

    def _record_signer(self) -> RecordSigner:
        """Signs our address records; the sequence number lives in the store (survives
        restarts, saved before each signing)."""
        def load() -> int | None:
            raw = self.store.get_state("peer-record-seq")
            return None if raw is None else int(cbor2.loads(raw))

        return RecordSigner(self.signer, self.network_id, load,
                            lambda seq: self.store.put_state("peer-record-seq", cbor2.dumps(seq)))

    async def _announce_dp(self) -> None:
        """Log the DP this peer trains with and what a round costs it; computing it in a
        thread also loads the accountant (seconds) before updates need it on the trio thread."""
        dp = self.dp
        assert dp is not None
        q, steps = dp.schedule(len(self.train_data))
        eps = await trio.to_thread.run_sync(round_epsilon, dp.noise_multiplier, q, steps,
                                            dp.delta, dp.accountant)
        log.info("DP-SGD: noise_multiplier %g, max_grad_norm %g, %d steps at sample rate %.3f: "
                 "epsilon %.3g a round (delta %g); spent so far %.3g", dp.noise_multiplier,
                 dp.max_grad_norm, steps, q, eps, dp.delta, self.privacy.epsilon(dp.delta)
                 if self.privacy else 0.0)

    def _spend_privacy(self, height: int, report: DpReport) -> None:
        """Add one round's DP-SGD to the budget, durably. Training a height again (after a
        restart) draws the same batches and noise from the same seed: it is counted once."""
        assert self.privacy is not None
        if height in self._privacy_spent:
            return
        self.privacy.record(report)
        self._privacy_spent[height] = self.privacy.rounds[-1]
        self.store.put_state("privacy", cbor2.dumps(
            {h: list(v) for h, v in self._privacy_spent.items()}, canonical=True))

    def _context(self) -> RoundContext:
        """The next round's context: the chain's position (chain.position, shared with sync)
        and the model it starts from."""
        self.chain_state.follow(self.store)
        position = self.chain_state.context()
        if position.height == 0:
            state = self.task.initial_state(self.genesis.seed)
            return replace(position, base_state=state, base_hash=state_hash(state))
        raw = self.models.get(position.base_hash)
        if raw is None:
            raise RuntimeError(f"model {position.base_hash.hex()[:12]} of block "
                               f"{position.height - 1} missing")
        return replace(position, base_state=state_from_bytes(raw))

    # gossip ------------------------------------------------------------------------------------
    def _validator(self, topic: str) -> Callable[[Any, rpc_pb2.Message], bool]:
        kinds = TOPIC_KINDS[topic]

        def validate(forwarder: Any, msg: rpc_pb2.Message) -> bool:
            self.traffic.add("gossip", "in", len(msg.data), str(forwarder))
            origin = None if topic in RELAYED_TOPICS else ID(msg.from_id).to_base58()
            verdict = self.admission.admit(msg.data, kinds, origin=origin)
            report_verdict(self.router, forwarder, verdict)  # misbehaviour lowers its score
            if verdict.envelope is not None:  # its round: not replayed once we move past it
                self.router.note_admitted(msg, verdict.envelope.kind, verdict.envelope.round)
            if not verdict.accepted:
                if verdict.code == "future-round":
                    self.sync.hint_behind()  # peers are rounds ahead: are we behind?
                self.rejections[verdict.code] += 1
                self.on_event({"event": "rejected", "peer": self.me, "code": verdict.code,
                               "topic": topic})
                # Late messages of a decided round are normal gossip; only misbehaviour is loud.
                log.log(logging.DEBUG if verdict.benign else logging.WARNING,
                        "rejected %s message via %s: %s", topic, str(forwarder)[-8:],
                        verdict.reason)
            return verdict.accepted

        return validate

    def _origin_check(self, topic: str, origin: str) -> str | None:
        """gossip.guarded_pubsub's cheap check: only members' (and joiners') messages are read."""
        may_join = topic == topic_name(self.network_id, "membership")
        return None if self.admission.origin_allowed(origin, may_join) else "not-member-origin"

    async def _read_topic(self, subscription: Any) -> None:
        async for msg in subscription:
            # Already admitted by the validator (signature included); decoding again is cheap.
            env = decode_envelope(msg.data)
            if env.kind == "metrics":  # a report, not a protocol input: the core never sees it
                self._on_metrics(env)
                continue
            await self._inbox_send.send(Received(env))

    async def _publish(self, ctx: RoundContext, kind: str, payload: Any, keep: bool) -> None:
        env = Envelope(kind, self.network_id, ctx.height, self.me, payload).signed_by(self.signer)
        data = env.encode()
        if len(data) > MAX_ENVELOPE_BYTES:
            log.error("not publishing %s: %d bytes is over the %d-byte gossip limit",
                      kind, len(data), MAX_ENVELOPE_BYTES)
            return
        if keep:
            self._own_messages.append((topic_of(kind), data))
        await self._publish_raw(kind, data)

    async def _publish_raw(self, kind: str, data: bytes) -> None:
        self.traffic.add("gossip", "published", len(data))
        await self._pubsub.publish(topic_name(self.network_id, topic_of(kind)), data)

    async def _rebroadcast(self) -> None:
        """Repeat this round's own messages: gossip has no replay for peers whose mesh was late.

        The wait doubles (up to REBROADCAST_BACKOFF times --rebroadcast-interval) while our
        messages stay the same, and starts again at the interval when we sign a new one or a
        round begins. Each repeat is a new gossip message that every peer receives about D
        times: at a fixed interval, a round slowed by a loaded machine repeated more, which
        slowed it further (a judged round under load went from 0.9 MB received per peer to
        22 MB, and the next never committed: docs/network.md, tenth pass)."""
        delay, last = self.config.rebroadcast_interval, None
        while True:
            await trio.sleep(delay)
            current = list(self._own_messages)
            if current != last:
                delay, last = self.config.rebroadcast_interval, current
            else:
                delay = min(2 * delay, REBROADCAST_BACKOFF * self.config.rebroadcast_interval)
            for topic, data in current:
                self.traffic.add("gossip", "published", len(data))
                await self._pubsub.publish(topic_name(self.network_id, topic), data)

    async def _connect_bootstrap(self, addr: str) -> None:
        """Dial one bootstrap peer, retrying with back-off while it is not up yet."""
        delay = 0.25
        deadline = trio.current_time() + self.config.start_wait
        info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        while True:
            # py-libp2p refuses to re-dial a peer for 60 s after one failed dial (its negative
            # cache); a bootstrap peer that is simply not up yet must be retried sooner, by us.
            negative_cache = getattr(self.host.get_network(), "_negative_peer_cache", None)
            if negative_cache is not None:
                negative_cache.evict(str(info.peer_id))
            try:
                await self.host.connect(info)
                log.info("connected to bootstrap peer %s", addr)
                return
            except Exception as exc:
                if trio.current_time() > deadline:
                    log.error("cannot reach bootstrap peer %s: %s", addr, exc)
                    return
            await trio.sleep(delay)
            delay = min(2 * delay, 4.0)

    async def _wait_for_peers(self) -> None:
        """Before the first round, wait (bounded) until enough peers share our topics.

        Members need not all be connected directly: gossip relays through the mesh, and the
        rebroadcast covers peers whose mesh formed after a message went out.
        """
        topic = topic_name(self.network_id, "committee")
        want = self.config.min_peers
        if want is None:
            want = len(self.config.bootstrap)

        def present() -> int:
            return len(self._pubsub.peer_topics.get(topic, ()))

        with trio.move_on_after(self.config.start_wait):
            while present() < want:
                await trio.sleep(0.2)
        log.info("starting with %d peers on our topics (waited for %d)", present(), want)
        # Two heartbeats, so the mesh is grafted before the first publish.
        await trio.sleep(2 * HEARTBEAT_SECONDS)

    # the round loop ----------------------------------------------------------------------------
    async def run(self) -> None:
        """Run until `rounds` blocks are committed (forever if None)."""
        torch.set_num_threads(self.config.threads)
        async with running_host(self.signer, self.config.listen,
                                mdns=self.config.mdns) as (host, pubsub, router):
            self.host, self._pubsub, self.router = host, pubsub, router
            self.sync = SyncService(host, self.genesis, self.store, self.models, me=self.me,
                                    position=self.chain_state,
                                    penalize=router.penalize, on_event=self.on_event)
            self.sync.install(serve_checkpoints=False)
            if self.collusion is not None:  # attack lab only: the colluders' side channel
                self.collusion.install(host)
            # One server on /cmfl/blob/1 for both kinds of large payload: update blobs and
            # model checkpoints (for syncing peers).
            BlobServer(BlobSources(self.blobs, CheckpointSource(self.models)),
                       on_served=lambda peer, n: self.traffic.add("blob", "out", n, peer)
                       ).install(host)
            addrs = [str(a) for a in host.get_addrs()]
            (self.config.data_dir / "listen_addrs").write_text("\n".join(addrs) + "\n")
            log.info("peer %s listening on %s", self.me, ", ".join(addrs))
            if self.dp is not None:
                await self._announce_dp()
            self.on_event({"event": "listening", "peer": self.me, "addrs": addrs})
            async with trio.open_nursery() as nursery:
                pubsub.origin_check = self._origin_check  # before any decoding
                for topic in TOPIC_KINDS:
                    name = topic_name(self.network_id, topic)
                    pubsub.set_topic_validator(name, self._validator(topic), False)
                    nursery.start_soon(self._read_topic, await pubsub.subscribe(name))
                for addr in self.config.bootstrap:
                    nursery.start_soon(self._connect_bootstrap, addr)
                # Peer exchange from the bootstrap peers on, mDNS if asked, redial after loss.
                self.discovery = Discovery(
                    host, self.genesis.members, network_id=self.network_id,
                    signer=self._record_signer(), mdns=self.config.mdns,
                    penalize=router.penalize,
                    on_twin=lambda member, pair: self._inbox_send.send_nowait(
                        TwinSeen(member, pair)))
                nursery.start_soon(self.discovery.run)
                if self.collusion is not None:  # attack lab only: the colluders' sender
                    nursery.start_soon(self.collusion.run)
                await self._wait_for_peers()
                # A new or lagging peer first reaches the network's head (chain/sync.py).
                await self.sync.catch_up()  # the position follows the synced blocks
                nursery.start_soon(self.sync.watch,
                                   lambda result: self._inbox_send.send(Synced(result)))
                nursery.start_soon(self._rebroadcast)
                while not self._done():
                    await self._run_round()
                await trio.sleep(self.config.linger)  # keep serving the last block to late peers
                nursery.cancel_scope.cancel()

    def _done(self) -> bool:
        head = self.store.head()
        return self.config.rounds is not None and head is not None and \
            head[0] + 1 >= self.config.rounds

    async def _run_round(self) -> None:
        ctx = self._context()
        begun = self.core.begin(
            ctx, persisted={k: self.store.get_state(k) for k in PERSISTED_KEYS},
            addrs=tuple(str(a) for a in self.host.get_addrs()))
        machine = self.core.machine
        assert machine is not None
        for kind in machine.written_ahead:
            log.info("round %d: publishing the %s signed before a restart", ctx.height, kind)
        self.admission.current_round = ctx.height
        self.router.enter_round(ctx.height)  # past rounds' messages are not replayed to anyone
        self.admission.members = frozenset(ctx.members)
        if self.discovery is not None:  # dial admitted members too (the founders stay dialled)
            self.discovery.allowed = frozenset(self.genesis.members) | frozenset(ctx.members)
        self._own_messages = []
        self._forget_blobs_before(ctx.height - 1)
        times = RoundTimes(time.monotonic())
        role = ("leader" if machine.is_committee and ctx.leader == self.me else
                "committee" if machine.is_committee else
                "trainer" if machine.is_trainer else "observer")
        log.info("round %d: %s (%d committee, %d trainers)", ctx.height, role,
                 len(ctx.committee), len(ctx.trainers))
        self.on_event({"event": "round", "peer": self.me, "height": ctx.height, "role": role})
        async with trio.open_nursery() as nursery:
            if machine.is_trainer or machine.is_committee:
                nursery.start_soon(self._train, ctx, times)
            await self._carry_out(machine, ctx, begun, times, nursery)
            if self.me not in ctx.members:  # begin asked to join (a joiner follows as observer)
                self.on_event({"event": "join-requested", "peer": self.me,
                               "height": ctx.height})
            for held in self.core.replay:  # messages that came before we reached this round
                await self._inbox_send.send(held)
            async for item in self._inbox:
                match item:
                    case Synced(result):  # verified blocks past this round: store them, move on
                        if self.sync.apply(result):
                            nursery.cancel_scope.cancel()
                            break
                        continue
                dispatched = time.monotonic()
                actions = self._dispatch(item, ctx, times)
                if any(isinstance(a, Publish) and a.kind == "scores" for a in actions):
                    times.marks["score_seconds"] = time.monotonic() - dispatched
                await self._carry_out(machine, ctx, actions, times, nursery)
                if machine.committed:
                    nursery.cancel_scope.cancel()  # stops this round's training and timers
                    break

    async def _carry_out(self, machine: RoundMachine, ctx: RoundContext, actions: list,
                         times: RoundTimes, nursery: trio.Nursery) -> None:
        """Do what the round core decided, in its order (a `Persist` before what it protects)."""
        if self.misbehaviour is not None:  # attack lab only (--byzantine, a lying --attack)
            actions = self.misbehaviour.outputs(actions)
        for action in actions:
            if isinstance(action, Persist):
                self.store.put_state(action.key, action.value)
            elif self.rushing_judge is not None and RushingJudge.is_vote(action) and \
                    not machine.pledged_votes:
                times.mark("collected")
                nursery.start_soon(self._rush_vote, ctx, machine, action)
            elif isinstance(action, Publish):
                if action.kind == "scores":
                    times.mark("collected")
                await self._publish(ctx, action.kind, action.payload, keep=action.repeat)
            elif isinstance(action, PublishSigned):
                await self._publish_raw(action.envelope.kind, action.envelope.encode())
            elif isinstance(action, OfferBlob):
                self._keep_blob(ctx.height, action.data)
            elif isinstance(action, FetchBlob):
                nursery.start_soon(self._fetch_update_blob, ctx.height, action)
            elif isinstance(action, FetchModel):
                nursery.start_soon(self._fetch_model, ctx.height, action)
            elif isinstance(action, Judge):
                nursery.start_soon(self._judge, action, times, machine)
            elif isinstance(action, SetTimer):
                nursery.start_soon(self._timer, ctx.height, action)
            elif isinstance(action, HintBehind):
                self.sync.hint_behind()
            elif isinstance(action, Rejected):
                self.rejections[action.code or f"invalid-{action.kind}"] += 1
                if action.logged:
                    log.warning("round %d: rejected %s from %s: %s", ctx.height, action.kind,
                                action.sender[-8:], action.reason)
                if action.penalty and action.sender:
                    # Proof of misbehaviour by its signer (not lag): its gossip score drops.
                    self.router.penalize(action.sender, action.penalty)
            elif isinstance(action, Convicted):
                log.warning("round %d: %s %s (%s): evidence kept and gossiped", ctx.height,
                            action.member[-8:], "has a twin" if action.kind == "twin"
                            else "equivocated", action.kind)
                # Proven misbehaviour lowers its gossip score too (gossip/peer_scoring.py).
                self.router.penalize(action.member, "equivocation")
                self.on_event({"event": "evidence", "peer": self.me, "height": ctx.height,
                               "member": action.member, "kind": action.kind})
            elif isinstance(action, Withheld):
                if not action.proven:
                    # Still in flight (a slow link, or the round was quick): not evidence.
                    log.info("round %d: decided before %s's update arrived", ctx.height,
                             action.trainer[-8:])
                    continue
                self.rejections["withheld-update"] += 1
                log.warning("round %d: %s announced an update but did not serve its bytes",
                            ctx.height, action.trainer[-8:])
                self.router.penalize(action.trainer, "withheld-update")
                self.on_event({"event": "withheld", "peer": self.me, "height": ctx.height,
                               "trainer": action.trainer})
            elif isinstance(action, Commit):
                await self._commit(ctx, action, times)

    async def _timer(self, height: int, timer: SetTimer) -> None:
        await trio.sleep(timer.seconds)
        await self._inbox_send.send(TimerFired(height, timer.name, timer.view))

    def _dispatch(self, item: Any, ctx: RoundContext, times: RoundTimes) -> list:
        """Hand one inbox item to the round core, marking the round's stage times."""
        match item:
            case Received(env) if env.kind in ("pre_prepare", "new_view") and \
                    env.round <= ctx.height:
                times.mark("proposed")
            case Trained(height) if height == ctx.height:
                times.mark("trained")
        return self.core.feed(item)

    # large updates ---------------------------------------------------------------------------
    def _keep_blob(self, height: int, data: bytes) -> None:
        self._blobs_by_round[height].append(self.blobs.put(data).digest)

    def _forget_blobs_before(self, height: int) -> None:
        for old in [h for h in self._blobs_by_round if h < height]:
            for digest in self._blobs_by_round.pop(old):
                self.blobs.discard(digest)

    async def _fetch_update_blob(self, height: int, action: FetchBlob) -> None:
        """Fetch an announced update's bytes: from its trainer first, else from any peer that
        already fetched it; retried until it arrives or the round ends (cancels this task)."""
        held = self.blobs.get(action.ref.digest)
        if held is not None:  # our own update, echoed back by gossip: no fetch
            await self._inbox_send.send(BlobArrived(height, action.ref.digest, held))
            return
        delay = 0.5
        announcer = ID.from_base58(action.provider)
        started = time.monotonic()
        while True:
            connected = self.host.get_connected_peers()
            others = [p for p in connected if p != announcer]
            # The trainer first if we are connected to it; dialling it is the last resort.
            order = [[announcer], others] if announcer in connected else [others, [announcer]]
            data = None
            for providers in order:
                try:
                    data = await fetch_blob(self.host, providers, action.ref,
                                            max_bytes=action.ref.size,
                                            on_bad_provider=self.router.penalize)
                    break
                except TransferError as exc:
                    if providers == [announcer]:
                        # The trainer itself did not serve what it signed: if the round is
                        # decided without the bytes, that is withholding (see Withheld).
                        self.core.feed(ServeFailed(height, action.provider))
                    log.info("round %d: update blob %s of %s not fetched yet (%s)", height,
                             action.ref.digest.hex()[:12], action.provider[-8:], exc)
            if data is not None:
                break
            await trio.sleep(delay)
            delay = min(2 * delay, 4.0)
        seconds = time.monotonic() - started
        self.traffic.add("blob", "in", len(data), action.provider)
        log.debug("round %d: fetched %d-byte update of %s in %.2fs", height, len(data),
                  action.provider[-8:], seconds)
        self.on_event({"event": "blob_fetched", "peer": self.me, "height": height,
                       "trainer": action.provider, "bytes": len(data),
                       "seconds": round(seconds, 3)})
        self._keep_blob(height, data)  # serve it on: peers not connected to the trainer
        await self._inbox_send.send(BlobArrived(height, action.ref.digest, data))

    async def _fetch_model(self, height: int, action: FetchModel) -> None:
        """Fetch a certified block's model by its hash from any connected peer (those that
        committed it serve it as a checkpoint), the certificate's signers first; retried until
        it arrives or the round ends."""
        delay = 0.5
        started = time.monotonic()
        first = set(action.providers)
        while True:
            held = self.models.get(action.ref.digest)
            if held is not None:
                data = held
                break
            connected = self.host.get_connected_peers()
            providers = sorted(connected, key=lambda p: p.to_base58() not in first)
            try:
                # A short chunk deadline: one stalled provider must not hold up the others.
                data = await fetch_blob(self.host, providers, action.ref,
                                        max_bytes=action.ref.size, chunk_timeout=10.0,
                                        on_bad_provider=self.router.penalize)
                self.traffic.add("blob", "in", len(data))
                break
            except TransferError as exc:
                log.info("round %d: model %s not fetched yet (%s)", height,
                         action.ref.digest.hex()[:12], exc)
            await trio.sleep(delay)
            delay = min(2 * delay, 4.0)
        log.debug("round %d: fetched the %d-byte model %s in %.2fs", height, len(data),
                  action.ref.digest.hex()[:12], time.monotonic() - started)
        await self._inbox_send.send(ModelArrived(height, action.ref.digest, data))

    async def _train(self, ctx: RoundContext, times: RoundTimes) -> None:
        g = self.genesis
        # Fresh shuffling each round, reproducible from the chain and the peer's shard.
        seed = int.from_bytes(ctx.prev_hash[:4], "big") ^ self.shard_index
        t = g.training
        dp = self.dp

        def work() -> tuple[ModelState, int, DpReport | None]:
            report = None
            if dp is None:
                trained = self.task.train_state(ctx.base_state, self.train_data, t, seed)
            else:
                trained, report = train_local_dp(
                    self.spec, ctx.base_state, self.train_data, dp.epochs, dp.lr, dp.batch_size,
                    seed, dp.noise_multiplier, dp.max_grad_norm, dp.delta, dp.accountant)
            if self.attack is not None and self.collusion is None:
                # ALIE's colluders observe only their own honest training here (no side
                # channel), so its mean/std comes from one sample; see learning.attacks.
                attack = self.attack.observe([trained], len(self.genesis.members),
                                             len(set(self.config.colluders) | {self.me}))
                trained = attack.poison_update(ctx.base_state, trained,
                                               np.random.default_rng(seed))
            return trained, len(self.train_data), report

        started = time.monotonic()
        state, samples, report = await trio.to_thread.run_sync(work, abandon_on_cancel=True)
        times.marks["train_seconds"] = time.monotonic() - started
        if self.collusion is not None:  # attack lab only: wait for the round, then craft
            machine = self.core.machine
            state = await self.collusion.update_to_send(
                ctx, state, times.started,
                lambda: {p: u.state for p, u in machine.updates.items()},
                np.random.default_rng(seed), self.on_event)
        if self.attack is not None:  # declared counts nothing can check (sample_factor)
            samples *= self.attack.sample_factor
        if report is not None:
            self._spend_privacy(ctx.height, report)
        await self._inbox_send.send(Trained(ctx.height, state, samples, report))

    async def _rush_vote(self, ctx: RoundContext, machine: RoundMachine, vote: Publish) -> None:
        """Attack lab: hold our vote until the honest judges' votes on its update set are in
        (or the propose deadline is near), then publish the rushing judge's lie instead."""
        judge = self.rushing_judge
        assert judge is not None
        deadline = time.monotonic() + self.config.timeouts.propose * 0.8
        while not judge.ready(ctx, vote.payload, machine.vote_vectors) and \
                time.monotonic() < deadline:
            await trio.sleep(0.05)
        lie = judge.lie(ctx, vote.payload, machine.vote_vectors)
        seen = len(judge.honest_votes(ctx, vote.payload, machine.vote_vectors))
        log.warning("attack lab: voting the rushing lie after %d honest votes", seen)
        self.on_event({"event": "rushing-lie", "peer": self.me, "height": ctx.height,
                       "honest_seen": seen, "target": judge.target})
        await self._publish(ctx, "scores", lie, keep=vote.repeat)

    async def _judge(self, action: Judge, times: RoundTimes, machine: RoundMachine) -> None:
        """Judged rounds: our training data's loss on the base model and on every candidate
        (off the event loop), fed back as `Judged` with a fresh salt (for a pledge)."""
        started = time.monotonic()
        losses = await trio.to_thread.run_sync(
            self.task.losses, [action.base, *action.candidates], self.train_data,
            abandon_on_cancel=True)
        times.marks["judge_seconds"] = time.monotonic() - started
        log.info("round %d: judged %d candidate models in %.2fs", action.height,
                 len(action.candidates), time.monotonic() - started)
        if self.rushing_judge is not None and machine.pledged_votes and machine.judging:
            # Attack lab: a pledged liar cannot wait for the honest votes (they are revealed
            # only once its pledge is in): it pledges the harness's blind lie, its own votes
            # standing in for the honest ones.
            losses = self.rushing_judge.blind_losses(machine.ctx, machine.judging, losses)
            log.warning("attack lab: pledging the blind lie")
            self.on_event({"event": "blind-lie", "peer": self.me, "height": action.height,
                           "target": self.rushing_judge.target})
        await self._inbox_send.send(Judged(action.height, losses[0], tuple(losses[1:]),
                                           os.urandom(SALT_BYTES)))

    async def _commit(self, ctx: RoundContext, action: Commit, times: RoundTimes) -> None:
        block = action.committed.block
        stored_at = time.monotonic()
        model_hash = self.models.put(state_bytes(action.new_state))
        assert model_hash == block.model_hash, "model bytes do not match the block's hash"
        self.store.append(action.committed)
        retain_checkpoints(self.store, self.models)
        convicted = self.chain_state.convicts(action.committed)
        self.chain_state.follow(self.store)
        if convicted:
            log.warning("height %d records misbehaviour of %s: excluded from committees",
                        block.height, ", ".join(sorted(p[-8:] for p in convicted)))
        times.marks["store_seconds"] = time.monotonic() - stored_at
        times.mark("committed")
        local, global_test = await trio.to_thread.run_sync(self._evaluate, action.new_state)
        accuracy = None if global_test is None else global_test.get("accuracy")
        event = {
            "event": "committed", "peer": self.me, "height": block.height,
            "hash": block.hash().hex(), "view": action.committed.certificate.view,
            "committee": list(block.committee),
            "selected": list(block.selected), "next_committee": list(block.next_committee),
            "joined": [c.peer for c in block.membership if c.kind == "join"],
            "left": [c.peer for c in block.membership if c.kind == "leave"],
            "convicted": sorted(convicted),
            "accuracy": None if accuracy is None else round(accuracy, 4),
            "local_metrics": {k: round(v, 4) for k, v in local.items()},
            "global_test": global_test and {k: round(v, 4) for k, v in global_test.items()},
            "round_seconds": round(times.marks["committed"], 3),
            "stages": {k: round(v, 4) for k, v in times.marks.items()},
            "attack": self.config.attack,
            "bytes": self.traffic.take_round(),
        }
        log.info("committed height %d %s %s in %.2fs (selected %d of %d; %d bytes in, "
                 "%d out)", block.height, block.hash().hex()[:12], _metrics_text(local),
                 times.marks["committed"], len(block.selected), len(block.trainers),
                 event["bytes"]["in"], event["bytes"]["out"])
        if self.privacy is not None and self.dp is not None:
            event["dp"] = self._privacy_spent_event(block.height)
            log.info("privacy: epsilon %.3g this round, %.3g in total (delta %g, %d rounds "
                     "trained)", event["dp"]["epsilon_round"], event["dp"]["epsilon_total"],
                     self.dp.delta, event["dp"]["rounds_trained"])
        for change in block.membership:
            log.info("height %d: %s %s", block.height,
                     "admits" if change.kind == "join" else "records the departure of",
                     change.peer[-8:])
        self.on_event(event)
        # Only a member of round `height` (its committee or trainers) reports on it: a peer
        # this block admits is not yet one, and its report would be refused as not-member.
        if self.me in block.trainers or self.me in block.committee:
            await self._report_metrics(block.height, block.hash(), local)

    def _evaluate(self, state: ModelState) -> tuple[dict[str, float], dict[str, float] | None]:
        """Metrics of a committed model on our own held-out data, and on the demo's global
        test split if there is one."""
        local = self.task.evaluate_state(state, self.held_out)
        test = None if self.test_data is None else self.task.evaluate_state(state, self.test_data)
        return local, test

    # federated evaluation ------------------------------------------------------------------
    async def _report_metrics(self, height: int, block_hash: bytes,
                              metrics: dict[str, float]) -> None:
        """Publish our signed evaluation of block `height` and count it ourselves."""
        payload = report_payload(height, block_hash, len(self.held_out), metrics)
        env = Envelope("metrics", self.network_id, height, self.me, payload).signed_by(
            self.signer)
        self._on_metrics(env)
        try:
            await self._publish_raw("metrics", env.encode())
        except Exception as exc:  # no peer on the topic yet: the report is only ours
            log.debug("metrics report of height %d not published: %s", height, exc)

    def _on_metrics(self, env: Envelope) -> None:
        try:
            summary = self.federated.add(env.sender, env.payload, envelope_round=env.round,
                                           current_round=self.admission.current_round)
        except ReportError as exc:
            self.rejections["invalid-metrics"] += 1
            log.warning("rejected metrics report of %s: %s", env.sender[-8:], exc)
            return
        if summary is not None:
            self.on_event({"event": "federated_metrics", "peer": self.me, **summary})

    def _privacy_spent_event(self, height: int) -> dict[str, Any]:
        """The privacy this peer spent: at `height` (0 if it did not train) and in total."""
        assert self.privacy is not None and self.dp is not None
        spent = self._privacy_spent.get(height)
        eps_round = 0.0 if spent is None else PrivacyAccountant(
            self.dp.accountant, [spent]).epsilon(self.dp.delta)
        return {"epsilon_round": eps_round, "epsilon_total": self.privacy.epsilon(self.dp.delta),
                "delta": self.dp.delta, "noise_multiplier": self.dp.noise_multiplier,
                "rounds_trained": len(self._privacy_spent)}


def _metrics_text(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.3f}" for k, v in sorted(metrics.items())) or "no metrics"


def chain_summary(data_dir: Path) -> dict[str, Any]:
    """Height and head hash of a peer's local chain (no network)."""
    store = BlockStore(data_dir / "chain.sqlite")
    try:
        head = store.head()
        return {"blocks": 0 if head is None else head[0] + 1,
                "height": None if head is None else head[0],
                "head": None if head is None else head[1].hex()}
    finally:
        store.close()
