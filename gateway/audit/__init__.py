"""The tamper-evident audit log: canonical entries, a Merkle tree, signed checkpoints."""
