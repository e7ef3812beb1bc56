"""The local content store and what its images are made of: blobs and tags
(``content_store``), manifests, indexes and configs (``image``, ``inspection``), and the
platforms an index offers (``platforms``).

The bottom layer: imports only the shared top-level modules (``errors``, ``reference``) and
``oci``; nothing in ``transfer``, ``unpack`` or ``run``.
"""
