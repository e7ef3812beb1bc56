"""Running an image's process: the containers pier started and their bundles
(``containers``), and starting one under an OCI runtime, runc or crun (``oci_runtime``).

May import ``unpack``, ``store``, the shared top-level modules and ``oci``; never ``transfer``.
"""
