"""The byte path between two processes on loopback: raw TCP, libp2p `/perf/1.0.0`, our fetch_blob.

Each probe starts a server process (this script with `--serve KIND`), which prints its address,
and measures one bulk download from it in this process, so both ends pay their own CPU as two
peers do. The baseline is raw TCP (trio sockets, no encryption) in the same run; the libp2p
probes use our host exactly as a peer builds it (p2p_node/host.py: TCP, Noise, yamux), so any
tuning there shows up here.

    python bench/transfer.py [--mib 64] [--repeat 3] [--only tcp,perf,blob]

Prints MiB/s per probe (best of `--repeat`, and the median) and each probe's ratio to raw TCP
and to libp2p's own /perf.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SERVER_SEED = b"\x11" * 32
CLIENT_SEED = b"\x22" * 32
PROBES = ("tcp", "perf", "blob")


# ---------------------------------------------------------------- servers (child processes)

async def serve_tcp(nbytes: int) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    print(f"ADDR 127.0.0.1:{port}", flush=True)
    block = bytes(1024 * 1024)

    async def handle(stream: trio.SocketStream) -> None:
        want = int.from_bytes(await stream.receive_some(8), "big")
        while want > 0:
            n = min(len(block), want)
            await stream.send_all(block[:n])
            want -= n
        await stream.aclose()

    await trio.serve_listeners(handle, listeners)


async def serve_libp2p(kind: str, nbytes: int) -> None:
    import multiaddr
    from libp2p.perf import PerfService

    from gossip.peer_keys import Signer
    from gossip.transfer import BlobServer, BlobStore
    from p2p_node.host import build_transport_host

    host = build_transport_host(Signer(SERVER_SEED))
    async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        if kind == "perf":
            await PerfService(host).start()
        else:
            store = BlobStore()
            ref = store.put(os.urandom(nbytes))
            BlobServer(store).install(host)
            print(f"REF {ref.digest.hex()} {ref.size}", flush=True)
        addr = host.get_addrs()[0]
        print(f"ADDR {addr}", flush=True)
        await trio.sleep_forever()


# ---------------------------------------------------------------- clients (this process)

async def probe_tcp(addr: str, nbytes: int) -> float:
    ip, port = addr.split(":")
    stream = await trio.open_tcp_stream(ip, int(port))
    t0 = time.perf_counter()
    await stream.send_all(nbytes.to_bytes(8, "big"))
    got = 0
    while got < nbytes:
        data = await stream.receive_some(1024 * 1024)
        if not data:
            break
        got += len(data)
    elapsed = time.perf_counter() - t0
    await stream.aclose()
    assert got == nbytes, (got, nbytes)
    return elapsed


async def _connected_client(addr: str):  # type: ignore[no-untyped-def]
    import multiaddr
    from libp2p.peer.peerinfo import info_from_p2p_addr

    from gossip.peer_keys import Signer
    from p2p_node.host import build_transport_host

    host = build_transport_host(Signer(CLIENT_SEED))
    info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
    return host, info


async def probe_libp2p(kind: str, addr: str, nbytes: int, ref_line: str) -> float:
    import multiaddr

    host, info = await _connected_client(addr)
    async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        await host.connect(info)  # connection set-up is not what is measured
        if kind == "perf":
            from libp2p.perf import PerfService

            perf = PerfService(host)
            await perf.start()
            t0 = time.perf_counter()
            async for out in perf.measure_performance(multiaddr.Multiaddr(addr), 0, nbytes):
                if out["type"] == "final":
                    assert out["download_bytes"] == nbytes, out
            return time.perf_counter() - t0
        from gossip.blob_ref import BlobRef
        from gossip.transfer import fetch_blob

        _, digest, size = ref_line.split()
        ref = BlobRef(bytes.fromhex(digest), int(size))
        t0 = time.perf_counter()
        data = await fetch_blob(host, [info.peer_id], ref, max_bytes=ref.size)
        elapsed = time.perf_counter() - t0
        assert len(data) == nbytes
        return elapsed


def run_probe(kind: str, nbytes: int) -> float:
    """Start the server for `kind`, download `nbytes` from it once, return the seconds."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    server = subprocess.Popen([sys.executable, __file__, "--serve", kind, "--bytes",
                               str(nbytes)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert server.stdout is not None
        ref_line, addr = "", ""
        while not addr:
            line = server.stdout.readline()
            if not line:
                raise RuntimeError(f"{kind} server exited before listening")
            if line.startswith("REF "):
                ref_line = line.strip()
            elif line.startswith("ADDR "):
                addr = line.split(None, 1)[1].strip()
        if kind == "tcp":
            return trio.run(probe_tcp, addr, nbytes)
        return trio.run(probe_libp2p, kind, addr, nbytes, ref_line)
    finally:
        server.terminate()
        server.wait(timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=64, help="MiB per download (default 64)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", default=",".join(PROBES))
    parser.add_argument("--serve", choices=PROBES, help=argparse.SUPPRESS)
    parser.add_argument("--bytes", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        if args.serve == "tcp":
            trio.run(serve_tcp, args.bytes)
        else:
            trio.run(serve_libp2p, args.serve, args.bytes)
        return 0
    nbytes = args.mib * 1024 * 1024
    kinds = [k for k in args.only.split(",") if k]
    rates: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(args.repeat):  # alternate the probes so load drifts hit all alike
        for kind in kinds:
            rates[kind].append(args.mib / run_probe(kind, nbytes))
    label = {"tcp": "raw TCP (no encryption)", "perf": "libp2p /perf/1.0.0 (our host)",
             "blob": "ours: fetch_blob /cmfl/blob/1"}
    print(f"\nbulk download, {args.mib} MiB, two processes on loopback, best of {args.repeat}:")
    best = {k: max(v) for k, v in rates.items()}
    for kind in kinds:
        line = (f"  {label[kind]:<32} {best[kind]:9.1f} MiB/s  (median "
                f"{statistics.median(rates[kind]):.1f})")
        if "tcp" in best and kind != "tcp":
            line += f"  {best[kind] / best['tcp']:6.3f}x raw TCP"
        if "perf" in best and kind == "blob":
            line += f"  {best[kind] / best['perf']:5.2f}x /perf"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
