"""Hostile peers for tests: a raw-frame libp2p peer (hostile_peer.py)."""
