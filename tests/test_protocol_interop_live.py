"""A js-libp2p peer (interop/js/live_peer.mjs, written from docs/protocol.md) joins a live network
of our peer processes: it verifies every envelope, block, certificate and score vector, syncs the
chain over /cmfl/sync/1, and sends forged, malformed, out-of-profile and non-member envelopes,
which our peers must reject with a logged reason while they keep committing one chain.

Needs Node >= 20 and npm (scripts/setup-env installs them); the test installs interop/js's npm
packages (pinned by its package-lock.json) with `npm ci` when they are missing or stale.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.process_cluster import ProcessCluster, held_hashes

ROOT = Path(__file__).parents[1]
JS = ROOT / "interop" / "js"
ROUNDS = 10
#: the height after which the js peer sends its hostile envelopes (and is pruned for them)
HOSTILE_AT = 6
#: a byte of the domain string inside the signed layout (array head, text head, then the text)
FLIPPED_LAYOUT_BYTE = 5
#: what each hostile envelope must be refused as (live_peer.mjs sends each to one peer)
EXPECTED = {"forged-signature": ("forged-signature", "signature does not verify"),
            "undecodable": ("undecodable", "not profile CBOR"),
            "malformed": ("malformed", "a float in a prepare payload"),
            "not-member": ("not-member", "is not a member"),
            "non-canonical": ("undecodable", "non-canonical")}


def node_binary() -> str:
    node = shutil.which("node")
    assert node, "node (>= 20) is needed for the js-libp2p interop peer: see scripts/setup-env"
    major = int(subprocess.run([node, "-p", "process.versions.node.split('.')[0]"],
                               capture_output=True, text=True, check=True).stdout)
    assert major >= 20, f"node {major} is too old for interop/js (>= 20)"
    return node


def ensure_packages() -> None:
    """interop/js's pinned npm packages, installed from the lock file when missing or stale."""
    lock = hashlib.sha256((JS / "package-lock.json").read_bytes()).hexdigest()[:16]
    stamp = JS / "node_modules" / f".installed-{lock}"
    if stamp.exists():
        return
    npm = shutil.which("npm")
    assert npm, "npm is needed to install interop/js's packages (see scripts/setup-env)"
    out = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=JS,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"npm ci in interop/js failed:\n{out.stdout}\n{out.stderr}"
    stamp.touch()


@pytest.mark.slow
def test_a_js_libp2p_peer_verifies_a_live_network_and_its_hostile_envelopes_are_refused(
        tmp_path):
    node = node_binary()
    ensure_packages()
    # Five members: four of our peers (a committee of three and a trainer) and the js peer (a
    # trainer that never trains: it only listens, and sends the hostile envelopes).
    net = ProcessCluster(tmp_path, size=5, committee_size=3)
    ours = range(4)
    js = 4
    js_dir = net.dirs[js]
    for i in ours:
        net.start(i)
    try:
        proc = subprocess.run(
            [node, str(JS / "live_peer.mjs"), "--genesis", str(tmp_path / "genesis.json"),
             "--key-file", str(js_dir / "identity.key"), "--rounds", str(ROUNDS), "--hostile",
             "--hostile-at", str(HOSTILE_AT),
             "--timeout", "600", *[x for i in ours for x in ("--peer", net.addrs[i])]],
            capture_output=True, text=True, timeout=700)
        (tmp_path / "js.log").write_text(proc.stderr)
        assert proc.stdout.strip(), f"no report from the js peer:\n{proc.stderr[-3000:]}"
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        print(json.dumps(report, indent=1))
        assert proc.returncode == 0 and report["failures"] == [], (
            f"{report['failures']}\n{proc.stderr[-3000:]}")
        assert report["peer_id"] == net.cluster.ids[js]
        assert report["peers_dialled"] == 4
        chain, gossip = report["chain"], report["gossip"]
        assert chain["blocks_verified"] >= ROUNDS
        assert chain["certificate_signatures_verified"] >= 2 * ROUNDS  # quorum of 3 is 2
        assert chain["score_vector_signatures_verified"] >= 2 * ROUNDS
        assert gossip["envelope_signatures_verified"] >= 10 * ROUNDS
        assert set(gossip["by_topic"]) >= {"updates", "committee", "blocks"}
        assert {"update", "scores", "pre_prepare", "prepare", "commit", "block"} <= set(
            gossip["by_kind"])
        # Blocks seen on gossip match the synced ones (a mismatch fails the js peer); after its
        # hostile envelopes every peer prunes it, so only the rounds before come by gossip.
        assert chain["gossip_blocks_matching_chain"] >= 3

        # Each hostile envelope was refused, with its code counted and its reason logged, by
        # the peer it was sent to.
        js_suffix = net.cluster.ids[js][-8:]
        for sent in report["hostile"]["sent"]:
            assert sent["sent"], sent
            i = net.addrs.index(next(a for a in net.addrs if a.endswith(sent["to"])))
            code, reason = EXPECTED[sent["expect"]]
            counted = (net.status(i) or {}).get("rejections", {})
            assert counted.get(code, 0) >= 1, (sent, counted)
            if sent["expect"] != "not-member":  # not-member is quiet for another round: below
                log = (net.dirs[i] / "node.log").read_text(errors="replace")
                assert f"via {js_suffix}: " in log and reason in log, (sent, net.log_tail(i))
        not_member_peer = next(s["to"] for s in report["hostile"]["sent"]
                               if s["expect"] == "not-member")
        i = next(j for j, a in enumerate(net.addrs) if a.endswith(not_member_peer))
        assert "is not a member" in (net.dirs[i] / "node.log").read_text(errors="replace")

        # Each of those peers scored us negative and so pruned us from its meshes (gossipsub
        # v1.1): the js peer received its PRUNE and has it out of its own mesh.
        for peer, seen in report["hostile"]["pruned_by"].items():
            assert seen["prunes"] >= 1 and seen["still_in_our_mesh"] == [], (peer, seen)

        # ... and our peers kept committing one chain, the one the js peer verified.
        after = report["hostile"]["at_height"] + 2
        net.wait_until(lambda: min(max(held_hashes(net.dirs[i]), default=-1) for i in ours)
                       >= after, f"every peer past height {after}", timeout=120)
        chains = [held_hashes(net.dirs[i]) for i in ours]
        for h in range(after + 1):
            assert len({c[h] for c in chains}) == 1, f"peers disagree at height {h}"
        assert chains[0][chain["height"]] == chain["head"]
        assert not net.dead()
        print(f"js verifier against {report['peers_dialled']} of our peers: "
              f"{chain['blocks_verified']} blocks ({chain['certificate_signatures_verified']} "
              f"certificate and {chain['score_vector_signatures_verified']} score-vector "
              f"signatures), {gossip['envelope_signatures_verified']} gossip envelope "
              f"signatures, {len(report['failures'])} failures")

        # The same verifier with one byte of the signed layout changed (a letter of the domain
        # string, §4) fails against the same live network. A fresh key: a reader, not a member.
        flipped_key = tmp_path / "flipped.key"
        flipped_key.write_text(hashlib.sha256(b"flipped").hexdigest())
        flipped = subprocess.run(
            [node, str(JS / "live_peer.mjs"), "--genesis", str(tmp_path / "genesis.json"),
             "--key-file", str(flipped_key), "--rounds", "2", "--timeout", "120",
             "--flip-layout-byte", str(FLIPPED_LAYOUT_BYTE), "--fail-fast",
             *[x for i in ours for x in ("--peer", net.addrs[i])]],
            capture_output=True, text=True, timeout=200)
        failures = json.loads(flipped.stdout.strip().splitlines()[-1])["failures"]
        print(f"with byte {FLIPPED_LAYOUT_BYTE} of the signed layout flipped: exit "
              f"{flipped.returncode}, first failure: {failures[:1]}")
        assert flipped.returncode == 1 and any(
            "does not verify" in f or "bad certificate signature" in f for f in failures), (
            failures, flipped.stderr[-2000:])
    finally:
        net.stop_all()
