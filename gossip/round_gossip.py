"""Gossip that forgets past rounds: a peer never replays, advertises or serves on request a
message of a round it has moved past (issue #17).

Our validator refuses past rounds' messages (gossip/validation.py `is_past`), so they are not
forwarded; but py-libp2p 0.8.1 also hands a peer messages it validated earlier, three ways:

* `send_recent_messages`: every message of the message cache's gossip window (3 heartbeats) is
  written to a peer as soon as it subscribes to a topic, one RPC each;
* `flush_pending_messages`: every message published while a connected peer was not yet
  subscribed is queued for it (up to 100, for 30 s) and written when it subscribes;
* IHAVE gossip (the window's message ids, each heartbeat) and IWANT answers (the 5-heartbeat
  history).

Measured on a peer grafted after height 3 of a 4-peer network (tests/test_net_graft.py): 15 of
93 messages it received were past (up to 3 rounds old) before this module, 0 of 110 with it.
With a 30-60 s heartbeat (py-libp2p's adaptive gossip, now off) the window spanned minutes:
the js-libp2p peer of interop/js/ was pushed messages spanning ~120 rounds.

`RoundMessageCache` is the message cache with each admitted message's kind and round (told by
the validator, `RoundScopedGossipSub.note_admitted`) and the peer's current round (told by the
driver, `enter_round`): a message of a round we moved past is no longer in any window and no
longer returned by `get`, so none of the three paths sends it. Messages never noted (topics
without our validator) are kept as py-libp2p keeps them.
"""

from __future__ import annotations

from typing import Any

from libp2p.peer.id import ID
from libp2p.pubsub.mcache import MessageCache, default_msg_id_fn
from libp2p.pubsub.pb import rpc_pb2

from gossip.peer_scoring import ScoredGossipSub
from gossip.validation import is_past


class RoundMessageCache(MessageCache):
    """py-libp2p's message cache (window and history in heartbeats), minus past rounds."""

    def __init__(self, window_size: int, history_size: int) -> None:
        super().__init__(window_size, history_size)
        self.current_round = 0
        #: message id -> (kind, round) of the messages held
        self._rounds: dict[bytes, tuple[str, int]] = {}
        # Validated, not yet put: the validator runs just before the router caches a message.
        # Two generations (cleared one per shift), so a note that is never put (a message the
        # router dropped after validation) does not stay.
        self._noted: dict[bytes, tuple[str, int]] = {}
        self._noted_before: dict[bytes, tuple[str, int]] = {}

    def note(self, mid: bytes, kind: str, round_: int) -> None:
        """The message with id `mid` was admitted as a `kind` of round `round_`."""
        self._noted[mid] = (kind, round_)

    def put(self, msg: rpc_pb2.Message) -> None:
        mid = default_msg_id_fn(msg)
        tag = self._noted.pop(mid, None) or self._noted_before.pop(mid, None)
        if tag is not None and mid not in self.msgs:
            self._rounds[mid] = tag
        super().put(msg)

    def is_past(self, mid: bytes) -> bool:
        """Whether the cached message `mid` belongs to a round this peer has moved past."""
        tag = self._rounds.get(mid)
        return tag is not None and is_past(tag[0], tag[1], self.current_round)

    def get(self, mid: bytes) -> rpc_pb2.Message | None:
        return None if self.is_past(mid) else super().get(mid)

    def window(self, topic: str) -> list[bytes]:
        return [mid for mid in super().window(topic) if not self.is_past(mid)]

    def shift(self) -> None:
        for entry in self.history[-1]:
            self._rounds.pop(entry.mid, None)
        super().shift()
        self._noted_before, self._noted = self._noted, {}


class RoundScopedGossipSub(ScoredGossipSub):
    """ScoredGossipSub whose replays, gossip and IWANT answers hold only current rounds."""

    mcache: RoundMessageCache

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.mcache = RoundMessageCache(self.mcache.window_size, self.mcache.history_size)

    def note_admitted(self, msg: rpc_pb2.Message, kind: str, round_: int) -> None:
        """Called by the validator for each message it admits (before the router caches it)."""
        self.mcache.note(default_msg_id_fn(msg), kind, round_)

    def enter_round(self, round_: int) -> None:
        """This peer's round is now `round_`: messages of rounds before it are not sent again."""
        self.mcache.current_round = round_

    async def flush_pending_messages(self, peer_id: ID) -> None:
        # The queue of messages published before the peer subscribed (kept 30 s): only those
        # the cache would still replay, i.e. recent ones of rounds still open, are sent.
        queue = self._pending_messages.get(peer_id)
        if queue:
            queue[:] = [(ts, rpc) for ts, rpc in queue
                        if all(self.mcache.get(default_msg_id_fn(m)) is not None
                               for m in rpc.publish)]
        await super().flush_pending_messages(peer_id)
