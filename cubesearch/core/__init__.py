"""What every step shares: errors and their one-line messages, logging, progress bars, threads,
files written atomically, redaction of secrets, resource limits, the version. Imports nothing
above it (tests/test_imports.py)."""
