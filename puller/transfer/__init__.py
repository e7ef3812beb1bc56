"""Moving images between places: registries over HTTP (``transport``, ``credentials``,
``pull``, ``push``, ``remote``), OCI layouts and docker archives on disk (``saved``,
``oci_layout``, ``docker_archive``, ``sources``).

May import ``store``, ``unpack`` (a docker archive's layers are decompressed to be checked),
the shared top-level modules and ``oci``; never ``run`` or ``cli``.
"""

import sys

# httpx imports its command-line client (click, rich, pygments: a twentieth of a second) on
# every import, inside a try that falls back when it cannot be imported. pier never runs
# it, so it is marked as unavailable (None in sys.modules makes its import fail): every
# pull, push and run starts that much sooner.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]  # None blocks an import, by design
