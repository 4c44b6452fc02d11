"""Time to sync and verify a 1,000-block chain over loopback libp2p, against reading it from disk.

    python bench/sync.py [--blocks 1000] [--members 10]

Builds a synthetic but valid chain (real Ed25519 signatures: updates, score vectors, commit
certificates; tiny model) with the pure round rules, stores it in one peer's data directory,
then measures: reading every block from SQLite (and decoding it), verifying the chain from
genesis without network, and a fresh peer syncing it from the first over `/cmfl/sync/1`
(heads, blocks in batches, checkpoint by hash, one store transaction).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import multiaddr
import trio
from libp2p.peer.peerinfo import info_from_p2p_addr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chain.block import CommittedBlock  # noqa: E402
from chain.store import BlockStore, ModelStore  # noqa: E402
from chain.verify import ChainVerifier, verify_store  # noqa: E402
from gossip.peer_keys import Signer  # noqa: E402
from p2p_node.host import running_host  # noqa: E402
from p2p_node.sync_service import SyncService  # noqa: E402
from tests.test_sync_support import build_chain  # noqa: E402

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]


def timed(fn):  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=1000)
    parser.add_argument("--members", type=int, default=10)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-sync-"))

    chain, build_s = timed(lambda: build_chain(args.blocks, members=args.members))
    chain.write(root / "server")
    server = BlockStore(root / "server" / "chain.sqlite")
    server_models = ModelStore(root / "server" / "models")
    size = sum(len(server.get_raw(h, 1, 1 << 30)[0]) for h in range(args.blocks))

    raw, read_raw_s = timed(lambda: server.get_raw(0, args.blocks, 1 << 40))
    _, read_s = timed(lambda: [server.get(h) for h in range(args.blocks)])

    def verify_only() -> None:
        verifier = ChainVerifier(chain.genesis)
        for data in raw:
            committed = CommittedBlock.decode(data)
            verifier.check(committed)
            verifier.advance(committed)

    _, verify_s = timed(verify_only)
    report, verify_store_s = timed(lambda: verify_store(chain.genesis, server, server_models))
    assert report.ok, report.summary()

    (root / "client").mkdir()
    client = BlockStore(root / "client" / "chain.sqlite")
    client_models = ModelStore(root / "client" / "models")

    async def sync() -> tuple[int, float]:
        async with running_host(Signer(b"\x01" * 32), LOOPBACK) as (a, _, _), \
                running_host(Signer(b"\x02" * 32), LOOPBACK) as (b, _, _):
            SyncService(a, chain.genesis, server, server_models).install()
            mine = SyncService(b, chain.genesis, client, client_models)
            await b.connect(info_from_p2p_addr(multiaddr.Multiaddr(str(a.get_addrs()[0]))))
            started = time.perf_counter()
            added = await mine.catch_up()
            return added, time.perf_counter() - started

    added, sync_s = trio.run(sync)
    assert added == args.blocks and client.head() == server.head()

    print(f"chain: {args.blocks} blocks, {args.members} members, {size / 1e6:.2f} MB "
          f"(built in {build_s:.1f} s)")
    rows = [
        ("read from SQLite (raw rows)", read_raw_s),
        ("read from SQLite + decode", read_s),
        ("verify from genesis (decode + check, no I/O)", verify_s),
        ("chain verify (read + verify + head checkpoint)", verify_store_s),
        ("sync over loopback libp2p (fetch + verify + store)", sync_s),
    ]
    print(f"{'stage':<52} {'seconds':>8} {'ms/block':>9} {'x read':>7}")
    for name, seconds in rows:
        print(f"{name:<52} {seconds:8.3f} {1000 * seconds / args.blocks:9.3f} "
              f"{seconds / read_s:7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
