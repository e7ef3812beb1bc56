"""pier's client: pull, push, save/load, unpack and run images.

Subpackages by job, each importing only those below it, and ``oci``:
``run`` -> ``unpack`` -> ``store``; ``transfer`` -> ``unpack``, ``store``. The modules at the
top are either shared by all of them (``errors``, ``text``, ``reference``, ``progress``,
``formatting``) or span several (``cli``; ``untag`` and ``prune``, which must ask the
containers in ``run`` what they still use, so they cannot live in ``store``).
"""
