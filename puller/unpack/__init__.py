"""Turning an image's layers into a directory tree: one layer applied safely (``layers``),
within bounds (``limits``), and the cache of unpacked rootfs trees (``rootfs``).

May import ``store``, the shared top-level modules and ``oci``; never ``transfer`` or ``run``.
"""
