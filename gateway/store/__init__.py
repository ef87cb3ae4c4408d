"""The transactional store: one database per gateway worker, one commit per micro-batch."""
