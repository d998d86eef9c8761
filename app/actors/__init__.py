"""Long-lived actors that own the running server's mutable state."""
