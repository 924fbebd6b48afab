"""phi-ray: the phi-1 recipe on Ray."""

__version__ = "0.1.0"
