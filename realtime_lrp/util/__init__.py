"""Small mechanisms every app shares: outputs committed atomically, and signal handling."""
