"""The users and the ACL the access-control tests share: alice and bob, owners of their own
repositories, with ``public/*`` open to pull for anyone."""

from __future__ import annotations

import base64

USERS = {"alice": "wonderland", "bob": "builder"}
ACL = """
[[rule]]
account = "anonymous"
repository = "public/*"
actions = ["pull"]

[[rule]]
account = "*"
repository = "${account}/*"
actions = ["*"]

[[rule]]
account = "*"
repository = "public/*"
actions = ["pull", "push"]
"""


def basic(user: str, password: str) -> dict[str, str]:
    """The ``Authorization`` header of a Basic login."""
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
