"""Code shared by the producer, the worker, the collector and the scaler."""
