"""OCI distribution error codes and the exception that carries one to the HTTP layer."""

from __future__ import annotations

from typing import Any


class RegistryError(Exception):
    """An error answered to the client in the OCI envelope `{"errors":[{code,message,detail}]}`."""

    code = "UNKNOWN"
    status = 500
    default_message = "unknown error"

    def __init__(
        self,
        message: str | None = None,
        *,
        detail: Any = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.message = message or self.default_message
        self.detail = detail
        if status is not None:
            self.status = status
        self.headers = headers or {}
        super().__init__(self.message)

    def body(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail is not None:
            entry["detail"] = self.detail
        return {"errors": [entry]}


def _error(code: str, status: int, message: str) -> type[RegistryError]:
    return type(
        "".join(part.capitalize() for part in code.split("_")) + "Error",
        (RegistryError,),
        {"code": code, "status": status, "default_message": message},
    )


BlobUnknown = _error("BLOB_UNKNOWN", 404, "blob unknown to registry")
BlobUploadInvalid = _error("BLOB_UPLOAD_INVALID", 400, "blob upload invalid")
BlobUploadUnknown = _error("BLOB_UPLOAD_UNKNOWN", 404, "blob upload unknown to registry")
DigestInvalid = _error("DIGEST_INVALID", 400, "provided digest did not match uploaded content")
ManifestBlobUnknown = _error("MANIFEST_BLOB_UNKNOWN", 400, "manifest references a blob unknown to registry")
ManifestInvalid = _error("MANIFEST_INVALID", 400, "manifest invalid")
ManifestUnknown = _error("MANIFEST_UNKNOWN", 404, "manifest unknown to registry")
NameInvalid = _error("NAME_INVALID", 400, "invalid repository name")
NameUnknown = _error("NAME_UNKNOWN", 404, "repository name not known to registry")
SizeInvalid = _error("SIZE_INVALID", 400, "provided length did not match content length")
TagInvalid = _error("TAG_INVALID", 400, "invalid tag")
Unauthorized = _error("UNAUTHORIZED", 401, "authentication required")
# A valid token of ours that lacks the action: 401 with `error="insufficient_scope"` in the challenge.
InsufficientScope = type("InsufficientScope", (Unauthorized,), {})
Denied = _error("DENIED", 403, "requested access to the resource is denied")
Unsupported = _error("UNSUPPORTED", 405, "the operation is unsupported")
TooManyRequests = _error("TOOMANYREQUESTS", 429, "too many requests")
PaginationInvalid = _error("PAGINATION_NUMBER_INVALID", 400, "invalid number of results requested")
RangeInvalid = _error("BLOB_UPLOAD_INVALID", 416, "requested range not satisfiable")
Unavailable = _error("UNAVAILABLE", 503, "service unavailable")
NotFound = _error("NOT_FOUND", 404, "not found")
MethodNotAllowed = _error("UNSUPPORTED", 405, "method not allowed")
