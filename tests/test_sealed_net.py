"""Genesis `sealing = "validators"` on real peers (libp2p hosts on loopback TCP): updates are
sealed to the round's committee. A non-member subscribed to the updates topic and the members
off the committee see ciphertext only; committee members score and commit; the others commit on
the certificate and fetch the model by its hash; every chain verifies, a late joiner's too."""

import multiaddr
import pytest
import trio
from libp2p.peer.peerinfo import info_from_p2p_addr

import p2p_node.round_machine as round_machine
from chain.genesis import Genesis
from chain.verify import verify_store
from gossip.envelope import decode_envelope
from gossip.peer_keys import Signer
from gossip.sealing import SealError, SealKey, open_sealed
from learning.tensors import state_from_bytes
from p2p_node.host import running_host
from p2p_node.identity import load_identity
from p2p_node.node import open_chain, topic_name
from tests.cluster import Cluster, EventLog

ROUNDS = 3


def test_sealed_updates_reach_only_the_committee_and_every_chain_verifies(tmp_path,
                                                                         monkeypatch):
    # Five founders (committee of 3) and a sixth peer that joins after round 0 (open admission).
    cluster = Cluster(tmp_path, size=6, committee_size=3, founders=5,
                      genesis_fields={"sealing": "validators"},
                      membership={"admission": "open"})
    founders, late = set(cluster.ids[:5]), cluster.ids[5]
    log = EventLog()
    opened: list[tuple[str, int, str]] = []  # (reader, height, trainer) of each update opened
    real_accept = round_machine.RoundMachine._accept_update

    def accept(self, sender, *args, **kwargs):
        opened.append((self.me, self.ctx.height, sender))
        return real_accept(self, sender, *args, **kwargs)

    monkeypatch.setattr(round_machine.RoundMachine, "_accept_update", accept)
    updates_topic = topic_name(cluster.genesis.network_id, "updates")
    seen: list[bytes] = []  # every update message the outsider received
    # The founders run until stopped: a joiner slow to start (a loaded machine) still finds
    # them, syncs, and then commits a round live, as a non-reader.
    configs = cluster.node_configs(rounds=None, min_peers=4, collect_timeout=8.0,
                                   propose_timeout=4.0)

    async def outsider(first: str, stop: trio.Event) -> None:
        """A non-member: dials a founder, subscribes to the updates topic, keeps what comes."""
        async with running_host(Signer(b"\x44" * 32), ["/ip4/127.0.0.1/tcp/0"]) as (h, p, _):
            await h.connect(info_from_p2p_addr(multiaddr.Multiaddr(first)))
            sub = await p.subscribe(updates_topic)
            with trio.move_on_after(600):
                while not stop.is_set():
                    with trio.move_on_after(1.0):
                        seen.append((await sub.get()).data)

    async def scenario():
        from p2p_node.node import Node

        with trio.fail_after(400):
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                nodes = [Node(c, log) for c in configs[:5]]
                for node in nodes:
                    nursery.start_soon(node.run)
                await log.wait_for(lambda ev: any(
                    e["event"] == "listening" and e["peer"] == cluster.ids[0] for e in ev))
                first = (tmp_path / "peer-0" / "listen_addrs").read_text().split()[0]
                nursery.start_soon(outsider, first, stop)
                await log.wait_for(lambda ev: log.peers_at("committed", 0) >= founders)
                joiner = Node(configs[5], log)
                nodes.append(joiner)
                nursery.start_soon(joiner.run)
                await log.wait_for(lambda ev: log.peers_at("committed", ROUNDS - 1) >= founders
                                   and late_committed(ev, late) >= ROUNDS - 1)
                stop.set()
                nursery.cancel_scope.cancel()
        return nodes

    nodes = trio.run(scenario)
    genesis = Genesis.load(tmp_path / "genesis.json")
    for node in nodes:
        node.store.close()
    chains = {}
    for d, peer in zip(cluster.dirs, cluster.ids):
        store, models = open_chain(d)
        report = verify_store(genesis, store, models)
        assert report.ok and report.blocks >= ROUNDS, (peer[-8:], report.summary())
        chains[peer] = [store.get(h) for h in range(ROUNDS)]
        store.close()
    assert len({tuple(c.block.hash() for c in chain) for chain in chains.values()}) == 1
    blocks = [c.block for c in chains[cluster.ids[0]]]

    # Only each round's committee opened its updates, and every committee member did (a
    # round whose updates all came too late, on a loaded machine, opened none).
    for height, block in enumerate(blocks):
        readers = {r for r, h, _ in opened if h == height}
        assert readers in (set(), set(block.committee)), (height, readers)
        assert readers or not block.selected
    assert any(block.selected for block in blocks)  # the committee scored and selected
    keys = {p: SealKey(load_identity(d)) for p, d in zip(cluster.ids, cluster.dirs)}

    # The outsider (and so every member off the committee: the same gossip) got ciphertext.
    updates = [decode_envelope(raw) for raw in seen]
    updates = [e for e in updates if e.kind == "update" and e.round < ROUNDS]
    assert updates, "the outsider received no update"
    for env in updates:
        body = env.payload
        assert "model" not in body and "delta" not in body and set(body["keys"])
        block = blocks[env.round]
        assert set(body["keys"]) == set(block.committee)
        with pytest.raises(ValueError):  # not a tensor map
            state_from_bytes(body["sealed"])
        plain = open_sealed(body["sealed"], body["keys"], keys[block.committee[0]],
                            body["commit"])
        tensors = state_from_bytes(plain)  # a committee member reads it
        chunk = next(iter(tensors.values())).numpy().tobytes()[:64]
        assert all(chunk not in raw for raw in seen), "plaintext tensor bytes on the wire"
        for peer in set(cluster.ids) - set(block.committee):
            with pytest.raises(SealError, match="not sealed to us"):
                open_sealed(body["sealed"], body["keys"], keys[peer], body["commit"])

    # Bytes each peer received per round (committed events): non-committee peers fetch the
    # model (one checkpoint) and no update blob.
    per_round: dict[str, list[int]] = {}
    for e in log.events:
        if e["event"] == "committed" and 0 < e["height"] < ROUNDS:
            role = "committee" if e["peer"] in e["committee"] else "other"
            per_round.setdefault(role, []).append(e["bytes"]["in"])
    print("bytes in per peer per round:",
          {r: sum(v) // len(v) for r, v in per_round.items()})
    assert not any(e["event"] == "blob_fetched" for e in log.events)


def late_committed(events, peer) -> int:
    """The highest height `peer` committed live (after its sync), -1 if none."""
    return max([e["height"] for e in events if e.get("peer") == peer and
                e["event"] == "committed"], default=-1)
