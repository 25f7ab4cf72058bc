"""Prove AI console: a Textual client that shows the agent's live view and its cases."""

__all__ = ["__version__"]

__version__ = "0.1.0"
