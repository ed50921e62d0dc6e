"""Who may talk to a region: PKI, SuperNode keys, node registration and device enrollment."""
