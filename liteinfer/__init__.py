"""liteinfer: lightweight local AI inference for small machines."""

__version__ = "0.1.0"
