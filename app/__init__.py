"""Simple-Registry: an OCI-compliant, Docker-compatible container registry."""

__version__ = "0.1.0"
