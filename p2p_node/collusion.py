"""The attack lab's omniscient colluders on real peers: the driver of
p2p_node.attack_lab.OmniscientColluder. Installed only on a peer running an omniscient
`--attack`; honest peers never construct it, nor serve its protocol.

Colluders share what they trained over a side channel of their own, the libp2p stream protocol
`/cmfl/attack-lab/collude/1` (only between peers named by `--colluder`; the secure channel
authenticates the sender, so nothing is signed): one frame, CBOR [height, state bytes], answered
by one byte. Then each waits for the round's honest updates as the round core accepted them
(gossiped inline or fetched as blobs) and crafts its update before the collect deadline.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Mapping

import cbor2
import numpy as np
import trio

from chain.round_rules import RoundContext
from gossip.cbor_profile import CborProfileError, decode_canonical
from gossip.transfer import MAX_CHUNK_BYTES, TransferError, read_frame, request_over_stream
from learning.tensors import ModelState, state_bytes, state_from_bytes, state_hash
from p2p_node.attack_lab import OmniscientColluder

log = logging.getLogger("p2p_node.collusion")

PROTOCOL_ID = "/cmfl/attack-lab/collude/1"
#: How often the waiting colluder looks at what the round core holds.
POLL_SECONDS = 0.1


class CollusionChannel:
    """Trained models of this round's fellow colluders, received over the side channel, and the
    sending of ours to them."""

    def __init__(self, colluder: OmniscientColluder) -> None:
        self.colluder = colluder
        #: height -> fellow -> the model it trained (the current and the next round only)
        self.received: dict[int, dict[str, ModelState]] = {}
        self.host: Any = None
        self._outbox_send, self._outbox_receive = trio.open_memory_channel[
            tuple[int, bytes]](16)
        self._newest = -1

    def install(self, host: Any) -> None:
        """Serve the side channel on `host`; `run` must then run in the node's nursery."""
        from libp2p.custom_types import TProtocol

        self.host = host
        host.set_stream_handler(TProtocol(PROTOCOL_ID), self._handle)

    async def _handle(self, stream: Any) -> None:
        sender = str(stream.muxed_conn.peer_id)
        try:
            if sender not in self.colluder.fellows:
                raise TransferError("refused", "not one of our colluders")
            with trio.fail_after(30):
                height, data = _decode(await read_frame(stream, MAX_CHUNK_BYTES + 64))
            state = state_from_bytes(data)
            self.received.setdefault(height, {})[sender] = state
            await stream.write(b"\x01")
        except (TransferError, ValueError, trio.TooSlowError) as exc:
            log.info("collusion: no model taken from %s: %s", sender[-8:], exc)
        except Exception as exc:  # the fellow hung up: it sends again
            log.info("collusion: stream from %s failed: %s", sender[-8:], type(exc).__name__)
        finally:
            try:
                await stream.close()
            except Exception:
                pass

    async def run(self) -> None:
        """Send each model handed to `share` to every fellow colluder, for the node's lifetime.
        Sends are never cancelled half-way (py-libp2p streams cut mid-negotiation can leave
        the connection stuck): a send is retried until it goes through or a newer round's
        model is waiting."""
        async for height, data in self._outbox_receive:
            async with trio.open_nursery() as nursery:
                for fellow in sorted(self.colluder.fellows):
                    nursery.start_soon(self._send, fellow, height, data)

    async def _send(self, fellow: str, height: int, data: bytes) -> None:
        from libp2p.peer.id import ID

        request = cbor2.dumps([height, data], canonical=True)
        delay = 0.2
        while self._newest == height:
            try:
                await request_over_stream(self.host, ID.from_base58(fellow), PROTOCOL_ID,
                                          request, lambda s: s.read(1), timeout=10)
                return
            except TransferError as exc:
                log.info("collusion: model not sent to %s yet: %s", fellow[-8:], exc)
            await trio.sleep(delay)
            delay = min(2 * delay, 2.0)

    def share(self, height: int, state: ModelState) -> None:
        """Queue our trained model of round `height` for every fellow colluder."""
        data = state_bytes(state)
        if len(data) > MAX_CHUNK_BYTES:
            log.warning("collusion: a %d-byte model is too large for the side channel; "
                        "fellows stand ours in with their own", len(data))
            return
        self._newest = height
        try:
            self._outbox_send.send_nowait((height, data))
        except trio.WouldBlock:  # sends of many past rounds still queued: fellows do without
            log.warning("collusion: round %d's model not queued (the queue is full)", height)

    async def update_to_send(self, ctx: RoundContext, own: ModelState, started: float,
                             updates: Callable[[], Mapping[str, ModelState]],
                             rng: np.random.Generator,
                             on_event: Callable[[dict], None]) -> ModelState:
        """Share `own`, wait for the round (see OmniscientColluder.ready), then craft.
        `started` is the round's start (time.monotonic); `updates()` what the round core holds."""
        for old in [h for h in self.received if h < ctx.height]:
            del self.received[old]
        self.share(ctx.height, own)
        c = self.colluder
        while not c.ready(ctx, updates(), self.received.get(ctx.height, {}),
                          time.monotonic() - started):
            await trio.sleep(POLL_SECONDS)
        base = ctx.base_state
        held = dict(updates())
        fellows = {p: s for p, s in self.received.get(ctx.height, {}).items()
                   if set(s) == set(base) and all(s[k].shape == base[k].shape for k in base)}
        crafted = await trio.to_thread.run_sync(
            lambda: c.update_to_send(ctx, own, held, fellows, rng), abandon_on_cancel=True)
        honest = sorted(set(held) - c.colluders)
        waited = time.monotonic() - started
        log.warning("attack lab: round %d: %s crafted from %d honest updates (of %d awaited) "
                    "and %d fellows' models, %.2fs into the round", ctx.height, c.attack.name,
                    len(honest), len(c.awaited(ctx)), len(fellows), waited)
        on_event({"event": "crafted", "peer": c.me, "height": ctx.height,
                  "attack": c.attack.name, "honest_seen": honest,
                  "awaited": sorted(c.awaited(ctx)), "fellows_seen": sorted(fellows),
                  "seconds": round(waited, 3), "trained_hash": state_hash(own).hex(),
                  "sent_hash": state_hash(crafted).hex()})
        return crafted


def _decode(data: bytes) -> tuple[int, bytes]:
    try:
        obj = decode_canonical(data)
    except CborProfileError as exc:
        raise ValueError(f"not canonical CBOR: {exc}") from None
    if not (isinstance(obj, list) and len(obj) == 2 and isinstance(obj[0], int) and
            not isinstance(obj[0], bool) and isinstance(obj[1], bytes)):
        raise ValueError("not [height, model bytes]")
    return obj[0], obj[1]
