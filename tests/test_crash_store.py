"""kill -9 of a process writing the store exactly as a peer does (a round's commit: checkpoint,
block, event line; a sync: checkpoint, blocks in one transaction, event line), at seeded random
points: the store is never corrupt and never short of a block it acknowledged.

The real-peer campaign (network, restarts, catch-up) is tests/test_crash_campaign.py.
"""

import random
import signal
import subprocess
import sys
import textwrap

import cbor2

from chain.store import BlockStore, ModelStore
from tests.test_crash_campaign import check_store
from tests.test_sync_support import build_chain

#: The writer: resumes from the store's head, commits one block at a time (every fourth step a
#: sync-style batch of three), writing the acknowledgement line after each store commit.
WRITER = textwrap.dedent("""
    import json, sys, time
    import cbor2
    from chain.block import CommittedBlock
    from chain.store import BlockStore, ModelStore
    data_dir, chain_file = sys.argv[1], sys.argv[2]
    blocks, models_raw = cbor2.loads(open(chain_file, "rb").read())
    store, models = BlockStore(f"{data_dir}/chain.sqlite"), ModelStore(f"{data_dir}/models")
    events = open(f"{data_dir}/events.jsonl", "a")
    step = 0
    while True:
        head = store.head()
        start = 0 if head is None else head[0] + 1
        if start >= len(blocks):
            break
        count = 3 if step % 4 == 3 else 1
        batch = [CommittedBlock.decode(b) for b in blocks[start:start + count]]
        models.put(models_raw[start + len(batch) - 1])
        store.append_many(batch)
        last = batch[-1].block
        kind = "synced" if count > 1 else "committed"
        events.write(json.dumps({"event": kind, "height": last.height,
                                 "hash": last.hash().hex()}) + "\\n")
        events.flush()
        step += 1
        time.sleep(0.02)  # pace: 200 steps outlast the kill windows even on a fast machine
""")


def test_kill_9_while_writing_never_corrupts_or_loses_an_acknowledged_block(tmp_path):
    rng = random.Random(7)
    chain = build_chain(200, members=6)
    data = tmp_path / "peer"
    data.mkdir()
    chain_file = tmp_path / "chain.cbor"
    chain_file.write_bytes(cbor2.dumps([[b.encode() for b in chain.blocks], chain.models]))
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    heights = []
    while len(heights) < 12 and (not heights or heights[-1] < len(chain.blocks) - 1):
        proc = subprocess.Popen([sys.executable, str(script), str(data), str(chain_file)])
        try:
            proc.wait(timeout=rng.uniform(0.3, 0.9))  # it may finish: then nothing to kill
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        heights.append(check_store(chain.genesis, data))
    kills = sum(1 for h in heights if h < len(chain.blocks) - 1)
    assert kills >= 3, f"too few kills landed mid-write: {heights}"
    assert heights == sorted(heights) and heights[-1] >= 0
    store = BlockStore(data / "chain.sqlite")
    assert [store.get(h).block for h in store.heights()] == \
        [b.block for b in chain.blocks[:len(store.heights())]]
    assert ModelStore(data / "models").digests()  # the head's checkpoint at least
