"""The independent Node verifier (interop/js/) accepts our vectors and refuses a changed byte.

Node >= 20 is required (scripts/setup-env checks it); the verifier uses no npm package.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).parents[1]
VERIFIER = ROOT / "interop" / "js" / "verify_vectors.mjs"
VECTORS = ROOT / "tests" / "vectors" / "vectors.json"


def _run(path: Path) -> subprocess.CompletedProcess:
    node = shutil.which("node")
    assert node, "node (>= 20) is needed for the interop verifier: see scripts/setup-env"
    return subprocess.run([node, str(VERIFIER), str(path)], capture_output=True, text=True,
                          timeout=120)


def test_js_verifier_accepts_every_vector():
    out = _run(VECTORS)
    assert out.returncode == 0, out.stdout + out.stderr
    n = len(json.loads(VECTORS.read_text())["envelopes"])
    assert f"envelope signatures verified: {n}/{n}; certificates verified: 1;" in out.stdout


def _flip(hexstr: str, offset: int) -> str:
    raw = bytearray(bytes.fromhex(hexstr))
    raw[offset] ^= 0x01
    return raw.hex()


def test_js_verifier_fails_on_one_flipped_byte_of_the_signed_layout(tmp_path):
    vectors = json.loads(VECTORS.read_text())
    env = vectors["envelopes"][0]
    wire = bytes.fromhex(env["wire"])
    # the last byte of the 32-byte network id (key "n" = 61 6e, then 58 20 and the id):
    at = wire.index(bytes.fromhex("616e5820")) + 4 + 31
    env["wire"] = _flip(env["wire"], at)
    path = tmp_path / "flipped.json"
    path.write_text(json.dumps(vectors))
    out = _run(path)
    assert out.returncode == 1, out.stdout
    assert "signature does not verify" in out.stdout


def test_js_verifier_fails_on_a_flipped_certificate_byte(tmp_path):
    vectors = json.loads(VECTORS.read_text())
    b = vectors["block"]
    raw = bytes.fromhex(b["committed_encoded"])
    sig = bytes.fromhex(b["certificate"]["commits"][0][1])
    b["committed_encoded"] = _flip(b["committed_encoded"], raw.index(sig) + 10)
    path = tmp_path / "flipped.json"
    path.write_text(json.dumps(vectors))
    out = _run(path)
    assert out.returncode == 1, out.stdout
    assert "bad certificate signature" in out.stdout
