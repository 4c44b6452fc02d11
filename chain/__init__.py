"""Genesis, blocks, their certificates, the rules a block follows, and each peer's block store."""
