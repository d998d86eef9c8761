"""What the lifecycle code needs of a lock store: `async with locks.hold(name, wait=...)`.

Every lock store of app/locks/ has this shape (the command passes the one the servers on the same store
use); lock names come from app/storage/locks.py, the same ones the server takes.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

# How long a repair waits for a lock the server holds (a push of that very blob or manifest) before it
# gives up on that one item (reported as not repaired; the next run tries again).
LOCK_WAIT = 30.0


class LockStore(Protocol):
    def hold(self, name: str, *, wait: float = ...) -> AbstractAsyncContextManager[Any]: ...
