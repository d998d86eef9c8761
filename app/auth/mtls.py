"""mTLS identity: the common names and organizations of a verified client certificate."""

from __future__ import annotations

import ssl
from typing import Any

from aiohttp import web

CertificateIdentity = tuple[list[str], list[str]]


def subject_identity(certificate: dict[str, Any]) -> CertificateIdentity:
    """All CN and O values of the subject of `certificate` (as `SSLObject.getpeercert()` returns it).

    Every value counts, in subject order, also those of multi-valued RDNs.
    """
    common_names: list[str] = []
    organizations: list[str] = []
    for rdn in certificate.get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                common_names.append(value)
            elif name == "organizationName":
                organizations.append(value)
    return common_names, organizations


def client_certificate_identity(request: web.BaseRequest) -> CertificateIdentity | None:
    """`(common_names, organizations)` of the client certificate, or None when there is none.

    Only a certificate the TLS handshake verified against `client_ca_bundle` is returned: without a
    client CA the server does not ask for one, and `getpeercert()` is empty for unverified peers.
    An invalid certificate never gets this far, since it fails the handshake.
    """
    transport = request.transport
    if transport is None:
        return None
    connection = transport.get_extra_info("ssl_object")
    if not isinstance(connection, ssl.SSLObject | ssl.SSLSocket):
        return None
    certificate = connection.getpeercert()
    if not certificate:
        return None
    return subject_identity(certificate)
