"""Authentication: who is calling (mTLS certificate, OIDC token, Basic credentials, or anonymous)."""
