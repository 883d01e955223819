"""Local stand-ins for the external systems mastmirror talks to (tests, benchmarks, demo)."""
