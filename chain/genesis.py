"""The genesis file: a network's identity. Its canonical hash is the network id."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cbor2

from bft.quorum import quorum_size
from chain.membership import MembershipRules
from gossip.peer_keys import public_key_from_peer_id
from learning.choice import RECOMMENDED
from learning.cmfl import RoundConfig
from learning.compression import UpdateCodec
from learning.dp_accounting import DpPolicy


class GenesisError(ValueError):
    """A genesis file that cannot define a network; the text says why."""


#: who signs commit certificates (Genesis.consensus)
CONSENSUS_SETS = ("committee", "members")
#: who can read an update (Genesis.sealing): everyone ("none", updates in the clear) or only
#: the round's validators, the peers that score or re-derive its block ("validators")
SEALING_MODES = ("none", "validators")


#: The scored rule of docs/learning.md (issue 14, third pass): the committee scores, every
#: scored update is centered-clipped around the coordinate median.
CLIP_FAR = RoundConfig(rule="auto", scoring="median", election="robust", typical="floored",
                       clone_ratio=0.02, max_cosine=0.9, sample_cap="median",
                       aggregate="clipped-aligned", drop_ratio=2.0)
#: Named genesis `selection` settings (`p2p-node genesis new --rule`, `demo --rule`):
#: cmfl-clip-far (scored rounds: an elected committee scores, clipping aggregates) and
#: cmfl-choose (judged rounds: every member trains and judges candidate models on its own
#: data, learning.choice; docs/learning.md, "Issue 14, fifth pass"), cmfl-choose-pledged and
#: cmfl-choose-clipped.
SELECTION_PRESETS: dict[str, dict[str, Any]] = {
    "cmfl-clip-far": CLIP_FAR.to_selection(),
    "cmfl-choose": replace(CLIP_FAR, choice=RECOMMENDED).to_selection(),
    # its votes pledged before they are revealed (eighth pass), the default in the ninth
    # (docs/learning.md)
    "cmfl-choose-pledged": replace(CLIP_FAR, choice=replace(RECOMMENDED, pledged=True)
                                   ).to_selection(),
    # pledged, and the subsets average clipped updates (tenth pass): the default
    "cmfl-choose-clipped": replace(CLIP_FAR, choice=replace(RECOMMENDED, pledged=True,
                                                            clip_subsets=True)).to_selection(),
}
DEFAULT_RULE = "cmfl-choose-clipped"


@dataclass(frozen=True)
class Genesis:
    """Initial members, round-0 committee, model spec, seed and hyperparameters."""

    name: str
    members: tuple[str, ...]
    committee: tuple[str, ...]
    seed: int = 0
    model: dict[str, Any] = field(default_factory=lambda: {"layers": [64, 64, 10]})
    #: epochs, lr, batch_size; optional `dp` (learning.privacy.DpPolicy: noise_multiplier,
    #: max_grad_norm, delta, accountant) makes every peer train with DP-SGD
    training: dict[str, Any] = field(
        default_factory=lambda: {"epochs": 2, "lr": 0.1, "batch_size": 16})
    data: dict[str, Any] = field(
        default_factory=lambda: {"dataset": "digits", "partition": "iid", "alpha": 0.5,
                                 "test_fraction": 0.2})
    #: learning.cmfl.RoundConfig settings; the default is `cmfl-clip-far` of docs/learning.md
    #: (median scoring, robust election barring clones; every scored trainer selected, its
    #: update centered-clipped around the coordinate-wise median, leaving out far ones, near-
    #: parallel ones and ones pointing away from the median; declared counts capped). A genesis
    #: without the issue-14 keys keeps the old rule.
    selection: dict[str, Any] = field(
        default_factory=lambda: dict(SELECTION_PRESETS[DEFAULT_RULE]))
    #: chain.membership settings: `admission` (closed, allowlist, open), `allow` (peer ids),
    #: `leave_after` (silent rounds; 0 never). Empty: the genesis members for ever.
    membership: dict[str, Any] = field(default_factory=dict)
    #: the learning task (learning.task): {"name", "version", "hash"}; `model` holds its
    #: settings. Empty: the original digits MLP of `model.layers` (learning.builtin_tasks).
    task: dict[str, Any] = field(default_factory=dict)
    #: who must sign a block's commit certificate: "committee" (the round's elected committee)
    #: or "members" (a quorum of the whole membership, so a captured committee cannot fork the
    #: chain: docs/consensus.md, "Committee safety")
    consensus: str = "committee"
    #: how updates travel (learning.compression.UpdateCodec): {"codec": "fp16"}, {"codec":
    #: "int8"} or {"codec": "topk", "fraction": f}; empty: the trained state itself
    compression: dict[str, Any] = field(default_factory=dict)
    #: "validators": every update is sealed to the round's validators (gossip.sealing): the
    #: committee, or every member under `consensus = "members"`; "none": in the clear
    sealing: str = "none"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name, "members": list(self.members), "committee": list(self.committee),
            "seed": self.seed, "model": self.model, "training": self.training, "data": self.data,
            "selection": self.selection}
        # Only when set: a genesis written before membership existed keeps its network id.
        if self.membership:
            d["membership"] = self.membership
        if self.task:  # likewise: a digits genesis from before tasks keeps its id
            d["task"] = self.task
        if self.consensus != "committee":
            d["consensus"] = self.consensus
        if self.compression:  # likewise: a genesis without compression keeps its id
            d["compression"] = self.compression
        if self.sealing != "none":  # likewise: a genesis without sealing keeps its id
            d["sealing"] = self.sealing
        return d

    @property
    def network_id(self) -> bytes:
        """SHA-256 of the canonical CBOR of the genesis content."""
        return hashlib.sha256(cbor2.dumps(self.to_dict(), canonical=True)).digest()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Genesis:
        """Build and check a genesis; GenesisError names the first problem."""
        try:
            g = cls(name=str(d["name"]), members=tuple(d["members"]),
                    committee=tuple(d["committee"]), seed=int(d.get("seed", 0)),
                    model=dict(d.get("model", {"layers": [64, 64, 10]})),
                    training=dict(d["training"]), data=dict(d["data"]),
                    selection=dict(d["selection"]),
                    membership=dict(d.get("membership", {})),
                    task=dict(d.get("task", {})),
                    consensus=str(d.get("consensus", "committee")),
                    compression=dict(d.get("compression", {})),
                    sealing=str(d.get("sealing", "none")))
        except (KeyError, TypeError, ValueError) as exc:
            raise GenesisError(f"genesis is missing or has a bad field: {exc}") from None
        g.check()
        return g

    def check(self) -> None:
        """Raise GenesisError if the genesis cannot define a working network."""
        if len(set(self.members)) != len(self.members):
            raise GenesisError("duplicate members")
        for peer in self.members:
            try:
                public_key_from_peer_id(peer)
            except ValueError as exc:
                raise GenesisError(f"member {peer!r}: {exc}") from None
        if not self.committee or not set(self.committee) <= set(self.members):
            raise GenesisError("the committee must be a non-empty subset of the members")
        if len(self.members) - len(self.committee) < 1:
            raise GenesisError("at least one member must be a trainer (not on the committee)")
        try:
            RoundConfig.from_selection(self.selection)
        except (TypeError, ValueError) as exc:
            raise GenesisError(f"selection: {exc}") from None
        try:
            DpPolicy.from_training(self.training)
        except (TypeError, ValueError) as exc:
            raise GenesisError(f"training.dp: {exc}") from None
        if self.task and not all(isinstance(self.task.get(k), str) and self.task[k]
                                 for k in ("name", "version", "hash")):
            raise GenesisError("task: needs non-empty strings name, version and hash")
        if self.consensus not in CONSENSUS_SETS:
            raise GenesisError(f"consensus must be one of {CONSENSUS_SETS}, got "
                               f"{self.consensus!r}")
        if self.sealing not in SEALING_MODES:
            raise GenesisError(f"sealing must be one of {SEALING_MODES}, got {self.sealing!r}")
        try:
            UpdateCodec.from_settings(self.compression)
        except (TypeError, ValueError) as exc:
            raise GenesisError(f"compression: {exc}") from None
        if quorum_size(len(self.committee)) > len(self.committee):
            raise GenesisError("committee too small for a quorum")
        try:
            MembershipRules.from_settings(self.membership, self.members)
        except (TypeError, ValueError) as exc:
            raise GenesisError(f"membership: {exc}") from None

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> Genesis:
        try:
            d = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise GenesisError(f"genesis file not found: {path}") from None
        except json.JSONDecodeError as exc:
            raise GenesisError(f"genesis file {path} is not valid JSON: {exc}") from None
        if not isinstance(d, dict):
            raise GenesisError(f"genesis file {path} is not a JSON object")
        return cls.from_dict(d)
