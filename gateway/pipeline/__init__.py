"""The pipeline stages, one module each, in flow order: decode, batch, classify, geo, decide,
shape; :mod:`~gateway.pipeline.run` calls them in that order.

Helpers of one stage live beside it: :mod:`~gateway.pipeline.dedup` (the batch stage's
de-duplication) and :mod:`~gateway.pipeline.counts` (the cross-border counts a batch is
decided on, read before its commit and checked in it)."""
