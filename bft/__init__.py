"""Committee agreement on each round's block (pure state machines; drivers live in p2p_node)."""
