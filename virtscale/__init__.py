"""Code shared by the producer, the worker, the collector and the scaler."""

#: The release; `--version` on every command prints it (setup.cfg reads it from here).
__version__ = "0.2.0"
