"""``rtlrp train`` and ``rtlrp export``: one training loop (AMP, DDP under torchrun) and runtime weights."""
