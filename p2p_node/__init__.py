"""The peer process: identity, configuration, the round core and its libp2p driver, the CLI."""
