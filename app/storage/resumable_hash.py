"""A SHA-256 whose running state can be saved and restored: an upload session continues in another
process (a restart, another replica) without reading back what was already uploaded.

hashlib cannot export its state, so this drives OpenSSL's SHA256_Init/Update/Final through ctypes on
the very libcrypto Python's own `_hashlib` is linked with, and saves the SHA256_CTX structure as it is
(112 bytes: eight state words, the bit count, the partial block, its length). The state is only ever
restored on the same kind of machine that saved it (one store, one fleet), and a header names the
format so that a state of another layout is refused, never misread. Where no libcrypto can be found,
`available()` is False and callers fall back to re-reading the stored bytes.

ctypes releases the GIL during foreign calls, as hashlib does for large updates: hashing runs in
parallel with the event loop.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import sys
from typing import Any

CTX_SIZE = 112  # sizeof(SHA256_CTX) in OpenSSL 1.1 and 3.x
_HEADER = b"sha256-openssl-ctx-v1:" + sys.byteorder.encode() + b":"


def _candidates() -> list[str]:
    names: list[str] = []
    try:
        import _hashlib

        names.append(str(_hashlib.__file__))  # its handle resolves the libcrypto it was linked with
    except (ImportError, AttributeError):
        pass
    found = ctypes.util.find_library("crypto")
    if found:
        names.append(found)
    if os.name == "nt":
        folder = os.path.dirname(sys.executable)
        names += [os.path.join(folder, "DLLs", name) for name in ("libcrypto-3.dll", "libcrypto-3-x64.dll",
                                                                   "libcrypto-1_1.dll")]
        names += ["libcrypto-3-x64.dll", "libcrypto-3.dll", "libcrypto-1_1-x64.dll"]
    return names


def _load() -> Any:
    for name in _candidates():
        try:
            library = ctypes.CDLL(name)
            for symbol in ("SHA256_Init", "SHA256_Update", "SHA256_Final"):
                getattr(library, symbol)
        except (OSError, AttributeError):
            continue
        library.SHA256_Init.argtypes = [ctypes.c_void_p]
        library.SHA256_Update.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        library.SHA256_Final.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
        for function in (library.SHA256_Init, library.SHA256_Update, library.SHA256_Final):
            function.restype = ctypes.c_int
        return library
    return None


_library: Any = None
_loaded = False


def _openssl() -> Any:
    global _library, _loaded
    if not _loaded:
        _library, _loaded = _load(), True
        if _library is not None and not _self_test(_library):
            _library = None
    return _library


def _self_test(library: Any) -> bool:
    """The saved structure must hash like hashlib after a round trip (a different layout would not)."""
    data = bytes(range(256)) * 3
    first = ResumableSha256(library)
    first.update(data[:100])
    second = ResumableSha256.restore(first.state(), library)
    if second is None:
        return False
    second.update(data[100:])
    return second.hexdigest() == hashlib.sha256(data).hexdigest()


def available() -> bool:
    return _openssl() is not None


class ResumableSha256:
    """The interface of hashlib's sha256 objects (update, copy, digest, hexdigest) plus state()."""

    name = "sha256"
    digest_size = 32

    def __init__(self, library: Any = None) -> None:
        self._library = library or _openssl()
        if self._library is None:
            raise RuntimeError("OpenSSL's SHA256 functions are not available")
        self._ctx = ctypes.create_string_buffer(CTX_SIZE)
        self._library.SHA256_Init(self._ctx)

    def update(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        if not view.nbytes:
            return
        if isinstance(data, bytes):
            self._library.SHA256_Update(self._ctx, data, view.nbytes)
        else:
            buffer = (ctypes.c_char * view.nbytes).from_buffer(view) if not view.readonly else bytes(view)
            self._library.SHA256_Update(self._ctx, buffer, view.nbytes)

    def copy(self) -> ResumableSha256:
        other = ResumableSha256.__new__(ResumableSha256)
        other._library = self._library
        other._ctx = ctypes.create_string_buffer(self._ctx.raw, CTX_SIZE)
        return other

    def digest(self) -> bytes:
        out = ctypes.create_string_buffer(32)
        self._library.SHA256_Final(out, ctypes.create_string_buffer(self._ctx.raw, CTX_SIZE))
        return out.raw

    def hexdigest(self) -> str:
        return self.digest().hex()

    def state(self) -> bytes:
        return _HEADER + self._ctx.raw

    @classmethod
    def restore(cls, state: bytes, library: Any = None) -> ResumableSha256 | None:
        """The hash a `state()` saved, or None when it is not a state of this format."""
        library = library or _openssl()
        if library is None or not state.startswith(_HEADER) or len(state) != len(_HEADER) + CTX_SIZE:
            return None
        restored = cls.__new__(cls)
        restored._library = library
        restored._ctx = ctypes.create_string_buffer(state[len(_HEADER):], CTX_SIZE)
        return restored


def new_sha256() -> Any:
    """A resumable SHA-256 where OpenSSL's functions are at hand, else hashlib's (not resumable)."""
    return ResumableSha256() if available() else hashlib.sha256()


def checkpoint_of(hasher: Any) -> bytes | None:
    """The saved state of a running hash (None for a hash that cannot be saved)."""
    return hasher.state() if isinstance(hasher, ResumableSha256) else None
