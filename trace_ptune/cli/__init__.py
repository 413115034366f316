"""The ``trace-ptune`` command line: thin click groups, one file per group."""
