"""PyREPL3: a Jupyter kernel for Python whose cells are durable executions."""

__version__ = "0.1.0"
