"""tests/wheel runs against the installed wheel only (``make test-wheel`` copies it out of the repository)."""

collect_ignore = ["test_wheel.py"]
