"""The registry's endpoints: one module per resource, and the table (``table.py``) that routes to them."""

from .services import Services
from .table import ACTIONS, ROUTES, Endpoint, Route, Router, describe, served

__all__ = ["ACTIONS", "ROUTES", "Endpoint", "Route", "Router", "Services", "describe", "served"]
