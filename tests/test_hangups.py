"""A peer that hangs up or resets in the middle of our request is a failed request, never an
exception that escapes into the peer's task tree (it once ended a whole peer: a lagging peer
synced from peers that were shutting down)."""

import pytest
import trio

from chain.genesis import Genesis
from chain.sync import HeadRequest, SyncError
from gossip.peer_keys import Signer
from gossip.transfer import BlobRef, TransferError, fetch_blob
from p2p_node.sync_service import SyncService
from chain.genesis import SELECTION_PRESETS

#: the scored rule (an elected committee scores) these tests exercise; judged rounds, the
#: default, are tests/test_judged_round.py and tests/test_judged_net.py
SCORED = SELECTION_PRESETS["cmfl-clip-far"]


class ResetStream:
    """What py-libp2p hands back when the remote resets: writes (or reads) raise StreamError."""

    def __init__(self, fail_on: str) -> None:
        self.fail_on = fail_on

    async def write(self, data: bytes) -> None:
        if self.fail_on == "write":
            raise RuntimeError("Write operation failed: TCP connection reset by remote peer")

    async def read(self, n: int) -> bytes:
        raise RuntimeError("Read operation failed: connection reset")

    async def close(self) -> None:
        pass


class ResettingHost:
    def __init__(self, fail_on: str) -> None:
        self.fail_on = fail_on

    async def new_stream(self, peer, protocols):
        return ResetStream(self.fail_on)


@pytest.mark.parametrize("fail_on", ["write", "read"])
def test_a_blob_provider_that_resets_is_a_failed_fetch(fail_on):
    ref = BlobRef(b"\x01" * 32, 10)

    async def main():
        with pytest.raises(TransferError) as caught:
            await fetch_blob(ResettingHost(fail_on), ["peer"], ref)
        assert caught.value.code == "unavailable"

    trio.run(main)


@pytest.mark.parametrize("fail_on", ["write", "read"])
def test_a_sync_peer_that_resets_is_a_failed_request(tmp_path, fail_on):
    member = Signer(b"\x07" * 32).peer_id
    genesis = Genesis(name="t", members=(member,), committee=(member,), selection=SCORED)
    service = SyncService(ResettingHost(fail_on), genesis, store=None, models=None)

    async def main():
        with pytest.raises(SyncError):
            await service.request("peer", HeadRequest())

    trio.run(main)
