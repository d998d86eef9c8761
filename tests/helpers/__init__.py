"""Test helpers: starting the real server process, tools, OCI images built in the test."""
