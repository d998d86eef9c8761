"""`registry argon` (alias `hash-password`): print an Argon2id PHC hash of a password."""

from __future__ import annotations

import getpass
import sys

from argon2 import PasswordHasher


def run() -> int:
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("error: the passwords differ", file=sys.stderr)
            return 2
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("error: empty password", file=sys.stderr)
        return 2
    print(PasswordHasher().hash(password))
    return 0
