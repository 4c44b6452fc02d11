"""Sync between real libp2p hosts on loopback: liars are dropped, the honest chain is stored."""

import multiaddr
import trio
from libp2p.peer.peerinfo import info_from_p2p_addr

from chain.block import CommittedBlock
from chain.store import BlockStore, ModelStore
from chain.verify import verify_store
from gossip.peer_keys import Signer
from p2p_node.host import running_host
from p2p_node.sync_service import SyncService
from tests.test_sync_core import CHAIN, tampered

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]


class LyingChain:
    """A store that claims two more blocks than the real chain and serves a tampered one."""

    def __init__(self, store: BlockStore, how: str, at: int) -> None:
        self.store, self.how, self.at = store, how, at

    def head(self):
        height, digest = self.store.head()
        return height + 2, digest

    def get_raw(self, start, count, max_bytes):
        raws = self.store.get_raw(start, count, max_bytes)
        return [tampered(CommittedBlock.decode(r), self.how) if start + i == self.at else r
                for i, r in enumerate(raws)]


class WrongModels:
    """A checkpoint source that has every model, with the wrong bytes."""

    def __init__(self, models: ModelStore) -> None:
        self.models = models

    def size(self, digest):
        return self.models.size(digest)

    def get(self, digest):
        data = self.models.get(digest)
        return None if data is None else bytes(len(data))


def test_a_peer_fed_tampered_chains_rejects_them_and_syncs_from_the_honest_one(tmp_path):
    CHAIN.write(tmp_path / "honest", keep_models=3)
    CHAIN.write(tmp_path / "me", upto=2)
    stores = {name: (BlockStore(tmp_path / name / "chain.sqlite"),
                     ModelStore(tmp_path / name / "models")) for name in ("honest", "me")}
    # Peer ids sort the model-liar before the honest peer, so its checkpoint is tried first.
    keys = sorted((Signer(bytes([i]) * 32) for i in range(1, 7)), key=lambda s: s.peer_id)
    blamed: list[tuple[str, str]] = []
    events: list[dict] = []

    async def main():
        with trio.fail_after(60):
            async with running_host(keys[0], LOOPBACK) as (model_liar, _, _), \
                    running_host(keys[1], LOOPBACK) as (honest, _, _), \
                    running_host(keys[2], LOOPBACK) as (link_liar, _, _), \
                    running_host(keys[3], LOOPBACK) as (cert_liar, _, _), \
                    running_host(keys[4], LOOPBACK) as (me, _, _):
                store, models = stores["honest"]
                SyncService(honest, CHAIN.genesis, store, models).install()
                SyncService(link_liar, CHAIN.genesis, LyingChain(store, "link", 5),
                            models).install()
                SyncService(cert_liar, CHAIN.genesis, LyingChain(store, "certificate", 9),
                            models).install()
                liar = SyncService(model_liar, CHAIN.genesis, store, models)
                liar.install(serve_checkpoints=False)
                from gossip.transfer import BlobServer
                BlobServer(WrongModels(models)).install(model_liar)
                mine = SyncService(me, CHAIN.genesis, *stores["me"], me="me",
                                   penalize=lambda p, why: blamed.append((str(p), why)),
                                   on_event=events.append)
                mine.install()
                for other in (model_liar, honest, link_liar, cert_liar):
                    await me.connect(info_from_p2p_addr(multiaddr.Multiaddr(
                        f"{other.get_addrs()[0]}")))
                added = await mine.catch_up()
                return added, {str(h.get_id()): n for h, n in (
                    (model_liar, "model"), (link_liar, "link"), (cert_liar, "cert"))}

    added, names = trio.run(main)
    assert added == len(CHAIN.blocks) - 2
    store, models = stores["me"]
    report = verify_store(CHAIN.genesis, store, models)
    assert report.ok and report.blocks == len(CHAIN.blocks) and report.models_checked == 1
    reasons = {names[e["from"]]: e["reason"] for e in events
               if e["event"] == "sync-dropped" and e["penalized"]}
    assert "hash link broken" in reasons["link"] and "block 5" in reasons["link"]
    assert "certificate signature" in reasons["cert"] and "block 9" in reasons["cert"]
    assert sorted(names[p] for p, why in blamed if why == "invalid-block") == ["cert", "link"]
    assert [names[p] for p, why in blamed if why == "blob-hash-mismatch"] == ["model"]
    assert [e["height"] for e in events if e["event"] == "synced"] == [len(CHAIN.blocks) - 1]
