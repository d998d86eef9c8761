"""How the lifecycle code locks: through the lock store of app/locks/ the servers on the same store use
(the command opens it), with the lock names of app/storage/locks.py, the same ones the server takes."""

from __future__ import annotations

from app.locks.base import LockStore

__all__ = ["LOCK_WAIT", "LockStore"]

# How long a repair waits for a lock the server holds (a push of that very blob or manifest) before it
# gives up on that one item (reported as not repaired; the next run tries again).
LOCK_WAIT = 30.0
