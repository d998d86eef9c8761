"""`make bench`: zb-style workloads against our server and CNCF distribution 2.8 (not a test suite)."""
