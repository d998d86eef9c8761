"""`GET /token` (Docker token protocol) and `POST /token` (its OAuth2 form): the token service's endpoint.

GET: `?service=&scope=&scope=…[&account=&offline_token=true&client_id=]`, credentials (if any) in the
`Authorization` header. POST: `application/x-www-form-urlencoded` with `grant_type=password`
(`username`, `password`, `access_type=offline` for a refresh token) or `grant_type=refresh_token`
(`refresh_token`); `service`, `scope` (space-separated) and `client_id` as in GET.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from aiohttp import web

from app import errors
from app.auth.scopes import parse_scopes
from app.context import Registry
from app.http.responses import json_response, read_limited
from app.http.router import Route

if TYPE_CHECKING:  # PyJWT and cryptography load with the token service, not with this module
    from app.auth.token_service import TokenService

# RFC 6749 5.1: token answers are never cached.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
MAX_FORM_BYTES = 64 * 1024
FORM_TYPE = "application/x-www-form-urlencoded"


def _service(registry: Registry) -> TokenService:
    if registry.authenticator.tokens is None:
        raise errors.NotFound("the token service is off ([auth.token] enabled = false)")
    from app.auth.token_service import TokenService

    return TokenService(registry.authenticator, registry.authorizer)


async def get_token(request: web.Request, route: Route, registry: Registry) -> web.StreamResponse:
    from app.auth.token_service import TokenRequest

    service = _service(registry)
    query = request.query
    token_request = TokenRequest(
        service=query.get("service"), scopes=parse_scopes(query.getall("scope", [])),
        offline=query.get("offline_token", "").lower() == "true", client_id=query.get("client_id"))
    service.check_service(token_request.service)
    identity = await service.caller(request)
    return json_response(await service.answer(identity, token_request, grant="get"), headers=NO_STORE)


async def post_token(request: web.Request, route: Route, registry: Registry) -> web.StreamResponse:
    service = _service(registry)
    if request.content_type != FORM_TYPE:
        raise errors.RegistryError(
            f"POST /token takes a form ({FORM_TYPE}), not {request.content_type[:100]!r}", status=400)
    try:
        form = parse_qs((await read_limited(request, MAX_FORM_BYTES)).decode("utf-8"), max_num_fields=64)
    except (UnicodeDecodeError, ValueError):
        raise errors.RegistryError("malformed form body", status=400) from None

    def field(name: str) -> str | None:
        values = form.get(name)
        return values[0] if values else None

    from app.auth.token_service import TokenRequest

    token_request = TokenRequest(service=field("service"), scopes=parse_scopes(form.get("scope", [])),
                                 offline=field("access_type") == "offline", client_id=field("client_id"))
    service.check_service(token_request.service)
    base = await service.caller(request)
    grant_type = field("grant_type")
    if grant_type == "password":
        if not field("username"):
            raise errors.Unauthorized("grant_type=password needs a username and password")
        identity = await service.login(base, field("username") or "", field("password") or "")
        body = await service.answer(identity, token_request, grant=grant_type, oauth=True)
    elif grant_type == "refresh_token":
        refresh_token = field("refresh_token")
        if not refresh_token:
            raise errors.RegistryError("grant_type=refresh_token needs a refresh_token", status=400)
        identity = await service.refreshed(base, refresh_token)
        body = await service.answer(identity, token_request, grant=grant_type, oauth=True,
                                    refresh_token=refresh_token)
    else:
        raise errors.RegistryError(f"unsupported grant_type {str(grant_type)[:50]!r}: use password or "
                                   f"refresh_token", status=400, detail={"error": "unsupported_grant_type"})
    return json_response(body, headers=NO_STORE)
