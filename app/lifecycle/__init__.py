"""The storage lifecycle core that `registry scrub` and the server's garbage collector share (no HTTP).

- `inventory`: one paginated walk of `repositories/` into what each repository holds (revisions, tags,
  layer and referrer links, upload sessions);
- `references`: the reference marking: which blobs every manifest revision of every repository
  references (config, layers, index children, subject);
- `checks`: the scrub checks, one module each (`uploads`, `tags`, `revisions`, `blobs`), each reporting
  what it found and what it repaired;
- `report`: findings, one summary line per check, the JSON report, the exit status;
- `scrub`: runs the selected checks in order over one store;
- `gc`: one online mark and sweep (the server's `[global.gc]`, app/services/garbage.py), safe beside
  concurrent pushes by the protocol of docs/gc.md.

Locks are taken through `locking.LockStore`, the shape of every store of app/locks/: the command passes
the one the servers on the same store use (files or Redis), so repairs and writes exclude each other.
"""
