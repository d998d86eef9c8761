"""The registry's operations over storage and actors, called by the thin HTTP handlers."""
