"""Ping latency to peers in the middle of training (issue #17): each ping on a fresh stream.

Starts `--peers` real `p2p-node run` processes on loopback (niced, as the tests run them),
waits until they commit, then from this process (a plain py-libp2p host) opens a new stream to
every peer each `--interval` seconds, negotiates `/ipfs/ping/1.0.0` and sends one 32-byte ping.
It prints the negotiation time (multistream-select over a fresh yamux stream: what js-libp2p's
connection monitor waits for) and the round trip, median / 90th percentile / max per stage,
with the load average and the heights committed while it measured. `--load N` adds N busy
processes (for a quiet machine); `--hidden 900,200` gives the peers a ~1 MiB model to chew.

    python -m bench.ping_latency [--peers 4] [--seconds 60] [--interval 0.5] [--load 0]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import secrets
import statistics
import tempfile
import time
from pathlib import Path

import multiaddr
import trio
from libp2p.host.ping import ID as PING
from libp2p.io.utils import read_exactly
from libp2p.peer.peerinfo import info_from_p2p_addr

from gossip.peer_keys import Signer
from p2p_node.host import running_host
from tests.process_cluster import ProcessCluster

RUN_ARGS = ("--collect-timeout", "3", "--propose-timeout", "2", "--view-timeout", "8",
            "--start-wait", "60", "--min-peers", "2")


def _spin() -> None:
    while True:
        pass


async def measure(addrs: list[str], seconds: float, interval: float) -> list[tuple]:
    """(peer, negotiate s, round trip s or None, error) for every ping sent."""
    samples: list[tuple] = []
    async with running_host(Signer(secrets.token_bytes(32)), ["/ip4/127.0.0.1/tcp/0"]) as (
            host, _, _):
        infos = [info_from_p2p_addr(multiaddr.Multiaddr(a)) for a in addrs]
        for info in infos:
            await host.connect(info)

        async def ping(i: int) -> None:
            start = time.monotonic()
            try:
                with trio.fail_after(30):
                    stream = await host.new_stream(infos[i].peer_id, [PING])
                    negotiated = time.monotonic()
                    payload = secrets.token_bytes(32)
                    await stream.write(payload)
                    assert await read_exactly(stream, 32) == payload
                    samples.append((i, negotiated - start, time.monotonic() - negotiated, ""))
                    await stream.close()
            except Exception as exc:  # a failed ping is a sample too
                samples.append((i, time.monotonic() - start, None,
                                f"{type(exc).__name__} after {time.monotonic() - start:.1f} s"))

        async with trio.open_nursery() as nursery:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                for i in range(len(infos)):
                    nursery.start_soon(ping, i)
                await trio.sleep(interval)
    return samples


def _stats(xs: list[float]) -> str:
    if not xs:
        return "none"
    xs = sorted(xs)
    return (f"median {1000 * statistics.median(xs):.0f} ms, p90 "
            f"{1000 * xs[int(0.9 * (len(xs) - 1))]:.0f} ms, max {1000 * xs[-1]:.0f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--load", type=int, default=0, help="extra busy processes")
    parser.add_argument("--hidden", default="", help="hidden layers, e.g. 900,200")
    args = parser.parse_args()
    spinners = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(args.load)]
    with tempfile.TemporaryDirectory() as tmp:
        fields = {}
        if args.hidden:
            fields = {"model": {"layers": [64, *map(int, args.hidden.split(",")), 10]}}
        net = ProcessCluster(Path(tmp), size=args.peers, committee_size=min(3, args.peers),
                             run_args=RUN_ARGS)
        if fields:
            net.cluster.genesis_fields = fields
            net.cluster.__post_init__()
        net.start_all()
        try:
            net.wait_until(lambda: min(net.heights()) >= 1, "every peer past height 1",
                           timeout=900)
            for s in spinners:
                s.start()
            before, load0 = net.network_height(), os.getloadavg()[0]
            samples = trio.run(measure, net.addrs, args.seconds, args.interval)
            after, load1 = net.network_height(), os.getloadavg()[0]
        finally:
            for s in spinners:
                s.terminate()
            net.stop_all()
    ok = [s for s in samples if s[2] is not None]
    print(f"{len(samples)} pings to {args.peers} peers over {args.seconds:.0f} s while they "
          f"committed heights {before}..{after}; load average {load0:.1f} -> {load1:.1f}"
          f" ({os.cpu_count()} cores, {args.load} extra busy processes)")
    print(f"  negotiate /ipfs/ping/1.0.0 on a new stream: {_stats([s[1] for s in ok])}")
    print(f"  32-byte round trip:                       {_stats([s[2] for s in ok])}")
    print(f"  over 1 s (negotiation + round trip): "
          f"{sum(1 for s in ok if s[1] + s[2] > 1)} of {len(ok)}; failed: "
          f"{len(samples) - len(ok)} {[s[3] for s in samples if s[3]][:8]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
