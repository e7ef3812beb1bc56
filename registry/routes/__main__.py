"""``python -m registry.routes``: print the endpoint list (Markdown) the docs show, from the route table."""

from .table import describe

print(describe())
