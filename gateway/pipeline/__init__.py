"""The pipeline stages, one module each, in flow order: decode, classify, geo, decide, shape."""
