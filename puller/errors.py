"""The one base of every error the client reports to its user as a single line."""


class PierError(Exception):
    """A failure whose message is meant for the user as it is: no traceback, exit code 1."""
