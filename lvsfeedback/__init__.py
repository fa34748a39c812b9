"""lvsfeedback: dynamic-feedback load balancing for Linux Virtual Server."""

__version__ = "0.1.0"
