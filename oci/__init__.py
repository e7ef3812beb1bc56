"""The OCI distribution core shared by pier's client (``puller``) and its mirror (``registry``).

Pure logic only (parsing, policy, validation): each side does its own I/O, so the rules
for challenges, tokens and where credentials may go are written once and cannot drift.
Nothing here imports ``registry``, ``puller`` or ``storage_backends``.
"""
