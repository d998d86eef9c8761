"""`registry server --admin`: an `admin` identity that may do everything, for a two-command quick start.

    registry server --admin          # prints the generated password once
    docker login -u admin localhost:5000 && docker push localhost:5000/app:1

The password comes from `REGISTRY_ADMIN_PASSWORD`, else from `--admin-password-file`, else from the
hash kept in the store since the first start (`auth/admin-password.phc`), else it is generated, its
hash kept in the store, and the password printed once. It is never read from the command line (where
other users of the machine could see it in the process list).

The identity and its superuser status are given to the configuration as `REGISTRY__AUTH__…`
environment overrides of this process, so they survive every live reload of the files. Everyone else
is governed by the configured policies; with none, the registry is private to the admin.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
from pathlib import Path

from app.config import Config, ConfigError, load
from app.storage import NotFound, layout, open_stores

ADMIN_ID = "admin"
PASSWORD_ENV = "REGISTRY_ADMIN_PASSWORD"


def _hash(password: str) -> str:
    from argon2 import PasswordHasher

    return PasswordHasher().hash(password)


async def _stored_or_new_hash(config: Config) -> tuple[str, str | None]:
    """The stored hash, or a new password (returned so it can be shown) whose hash is now stored."""
    storage = open_stores(config.blob_store, config.metadata_store)
    try:
        try:
            return (await storage.get(layout.ADMIN_PASSWORD_HASH)).decode(), None
        except NotFound:
            pass
        password = secrets.token_urlsafe(18)
        if await storage.create(layout.ADMIN_PASSWORD_HASH, _hash(password).encode(), private=True):
            return (await storage.get(layout.ADMIN_PASSWORD_HASH)).decode(), password
        return (await storage.get(layout.ADMIN_PASSWORD_HASH)).decode(), None  # another process won
    finally:
        await storage.close()


def enable(config: Config, files: list[Path] | None, password_file: Path | None) -> Config:
    """The configuration with the admin identity added (raises ConfigError when it cannot be)."""
    if ADMIN_ID in config.auth.identity or any(i.username == ADMIN_ID for i in config.auth.identity.values()):
        raise ConfigError(f"--admin: the configuration already has an identity {ADMIN_ID!r}")
    shown: str | None = None
    if os.environ.get(PASSWORD_ENV):
        phc = _hash(os.environ[PASSWORD_ENV])
        source = f"the {PASSWORD_ENV} environment variable"
    elif password_file is not None:
        try:
            password = password_file.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(f"--admin-password-file {password_file}: {exc.strerror or exc}") from None
        if not password:
            raise ConfigError(f"--admin-password-file {password_file}: the file is empty")
        phc = _hash(password)
        source = str(password_file)
    else:
        try:
            phc, shown = asyncio.run(_stored_or_new_hash(config))
        except OSError as exc:
            raise ConfigError(f"--admin: cannot keep the admin password in the store: {exc}") from None
        source = f"the store ({layout.ADMIN_PASSWORD_HASH}; delete it to get a new password)"
    prefix = "REGISTRY__AUTH__"
    os.environ[f"{prefix}IDENTITY__{ADMIN_ID.upper()}__USERNAME"] = ADMIN_ID
    os.environ[f"{prefix}IDENTITY__{ADMIN_ID.upper()}__PASSWORD"] = phc
    os.environ[f"{prefix}SUPERUSERS"] = json.dumps(sorted({*config.auth.superusers, ADMIN_ID}))
    if shown is not None:
        print(f"\n  admin password (shown once): {shown}\n  log in with: docker login -u {ADMIN_ID} "
              f"{config.server.bind_address}:{config.server.port}\n", file=sys.stderr)
    else:
        print(f"admin identity enabled; its password is the one from {source}", file=sys.stderr)
    return load(files)
