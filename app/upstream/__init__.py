"""The upstream registry client: challenge-based auth, redirects, TLS, timeouts, and failover."""
