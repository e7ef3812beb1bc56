"""Moving images between places: registries over HTTP (``transport``, ``credentials``,
``pull``, ``push``, ``remote``), OCI layouts and docker archives on disk (``saved``,
``oci_layout``, ``docker_archive``, ``sources``).

May import ``store``, ``unpack`` (a docker archive's layers are decompressed to be checked),
the shared top-level modules and ``oci``; never ``run`` or ``cli``.
"""
