"""Fleet simulator and trace replay for icv-gateway."""
