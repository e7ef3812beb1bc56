"""Whether the storage can take writes: remembered when it ran out, rechecked by /readyz.

A write that fails for lack of space (``StorageFull``) marks the registry full; /readyz
then answers 503 until the storage has room again, while reads go on being served. On
local disk /readyz also looks at the free space every time (``statvfs``, cheap), so every
worker process says so, not only the one whose write failed. Where the medium cannot tell
its free space (S3) only a failed write of this process marks it full, and a small probe
write decides when there is room again.
"""

from __future__ import annotations

import time

from storage_backends import StorageDriver, StorageFull

from . import layout

NO_SPACE = "no space left on the registry's storage"
ROOM_NEEDED = 1 << 20  # free bytes that count as "writable again"


class SpaceWatch:
    def __init__(self) -> None:
        self.full_since: float | None = None  # time.time() of the first failed write

    def mark_full(self) -> None:
        if self.full_since is None:
            self.full_since = time.time()

    async def writable(self, driver: StorageDriver) -> bool:
        """False while the storage is full: less than ``ROOM_NEEDED`` free on local disk, or
        still full since a write failed for lack of space."""
        free = await driver.free_space()
        if free is not None:
            room = free >= ROOM_NEEDED
            if not room:
                self.mark_full()
        elif self.full_since is None:
            return True
        else:
            try:
                await driver.put_content(layout.SPACE_PROBE, bytes(ROOM_NEEDED))
                await driver.delete(layout.SPACE_PROBE)
                room = True
            except StorageFull:
                room = False
        if room:
            self.full_since = None
        return room
