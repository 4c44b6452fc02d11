"""Discovery between real hosts on loopback: peer exchange, redial after loss, mDNS."""

from contextlib import AsyncExitStack

import pytest
import trio

from gossip.peer_keys import Signer
from p2p_node.demo import free_ports
from p2p_node.discovery import (DiscoveryError, Discovery, decode_peer_list,
                                encode_peer_list)
from p2p_node.host import running_host


async def until(predicate, timeout: float) -> float:
    """Seconds until predicate() holds. Polls: py-libp2p has no event for new connections."""
    start = trio.current_time()
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.05)
    return trio.current_time() - start


def test_peer_list_round_trips_and_refuses_junk():
    entries = [("12D3KooWabc", ["/ip4/10.0.0.1/tcp/4001"])]
    assert decode_peer_list(encode_peer_list(entries)) == entries
    for junk in (b"\xff", b"\xa0", encode_peer_list([("x", ["not a multiaddr"])]),
                 b"\x9f" * 70000):
        with pytest.raises(DiscoveryError):
            decode_peer_list(junk)


def test_peers_knowing_one_peer_find_all_and_reconnect_after_loss():
    signers = [Signer(bytes([30 + i]) * 32) for i in range(5)]
    ids = [s.peer_id for s in signers]
    ports = free_ports(len(signers))
    listen = [f"/ip4/127.0.0.1/tcp/{p}" for p in ports]
    first = f"{listen[0]}/p2p/{ids[0]}"

    async def peer(i, stack, nursery):
        host, _, _ = await stack.enter_async_context(running_host(signers[i], [listen[i]]))
        disc = Discovery(host, ids, bootstrap=[first] if i else [], interval=0.5)
        nursery.start_soon(disc.run)
        return host, disc

    def full_mesh(hosts) -> bool:
        return all(len(h.get_connected_peers()) >= len(hosts) - 1 for h in hosts)

    async def main():
        with trio.fail_after(60):
            async with AsyncExitStack() as stack:
                nursery = await stack.enter_async_context(trio.open_nursery())
                stack.callback(nursery.cancel_scope.cancel)  # runs first on the way out
                peers = [await peer(i, stack, nursery) for i in range(4)]
                hosts = [h for h, _ in peers]
                # Each knows only peer 0; exchange spreads the rest.
                await until(lambda: full_mesh(hosts), 20)

                # A link goes away (both sides drop it): it comes back by itself.
                await hosts[1].disconnect(hosts[2].get_id())
                await hosts[2].disconnect(hosts[1].get_id())
                await until(lambda: hosts[2].get_id() in hosts[1].get_connected_peers(), 20)

                # A peer goes away and restarts on its address: everyone redials it.
                async with AsyncExitStack() as inner:
                    inner_nursery = await inner.enter_async_context(trio.open_nursery())
                    inner.callback(inner_nursery.cancel_scope.cancel)
                    late, _ = await peer_in(4, inner, inner_nursery)
                    await until(lambda: full_mesh(hosts + [late]), 20)
                await until(lambda: all(ids[4] not in {str(p) for p in h.get_connected_peers()}
                                        for h in hosts), 20)
                async with AsyncExitStack() as inner:
                    inner_nursery = await inner.enter_async_context(trio.open_nursery())
                    inner.callback(inner_nursery.cancel_scope.cancel)
                    late, _ = await peer_in(4, inner, inner_nursery, bootstrap=False)
                    await until(lambda: full_mesh(hosts + [late]), 30)

    async def peer_in(i, stack, nursery, bootstrap=True):
        host, _, _ = await stack.enter_async_context(running_host(signers[i], [listen[i]]))
        # Restarted without a bootstrap address: the others must find it again.
        disc = Discovery(host, ids, bootstrap=[first] if bootstrap else [], interval=0.5)
        nursery.start_soon(disc.run)
        return host, disc

    trio.run(main)


def test_mdns_finds_peers_with_no_address_given():
    signers = [Signer(bytes([50 + i]) * 32) for i in range(3)]
    ids = [s.peer_id for s in signers]

    async def main():
        with trio.fail_after(40):
            async with AsyncExitStack() as stack:
                nursery = await stack.enter_async_context(trio.open_nursery())
                stack.callback(nursery.cancel_scope.cancel)
                hosts = []
                for s in signers:
                    host, _, _ = await stack.enter_async_context(
                        running_host(s, ["/ip4/127.0.0.1/tcp/0"], mdns=True))
                    nursery.start_soon(Discovery(host, ids, mdns=True, interval=0.5).run)
                    hosts.append(host)
                try:
                    await until(lambda: all(len(h.get_connected_peers()) >= 2 for h in hosts),
                                25)
                except trio.TooSlowError:
                    return False
                return True

    if not trio.run(main):
        pytest.skip("no mDNS answers here (multicast on loopback unavailable?)")
