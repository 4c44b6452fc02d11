"""Signed envelopes, topics and the checks every gossip message passes before anything reads it."""
