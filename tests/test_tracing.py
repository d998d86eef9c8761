"""Tracing end to end: a registry with `[observability.tracing]` exports its spans over OTLP/HTTP to a
loopback collector (tests/helpers/otlp.py decodes the protobuf), for a push and for a pull-through
miss against a real upstream (CNCF distribution); the trace id in a 4xx body and in the access log
is the exported request span's."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app.tracing.otel import traces_url
from tests.helpers.distribution import DistributionProcess
from tests.helpers.oci import make_image, random_layer
from tests.helpers.otlp import OTLPReceiver, Span
from tests.helpers.server import RegistryProcess
from tests.helpers.upstreams import pull_through_config, push

SERVER = 2  # OTLP's SPAN_KIND_SERVER (the children are SPAN_KIND_INTERNAL, 1)


@pytest.fixture
def receiver() -> Iterator[OTLPReceiver]:
    collector = OTLPReceiver()
    collector.start()
    yield collector
    collector.stop()


def _tracing(receiver: OTLPReceiver) -> str:
    return (f'[observability.tracing]\nendpoint = "{receiver.url}"\nservice_name = "registry-under-test"\n'
            "sampling_rate = 1.0\n")


def _root(roots: list[Span], name: str, method: str, path_end: str) -> Span:
    found = [r for r in roots if r.name == name and r.attributes.get("http.request.method") == method
             and str(r.attributes.get("url.path", "")).endswith(path_end)]
    assert len(found) == 1, [(r.name, r.attributes) for r in roots]
    return found[0]


def _names(span: Span) -> list[str]:
    return [child.name for child in span.children]


def test_push_and_pull_through_miss_span_trees(receiver: OTLPReceiver, tmp_path: Path,
                                               start_registry: Callable[..., RegistryProcess]) -> None:
    upstream = DistributionProcess(tmp_path / "upstream", tmp_path / "upstream-data").start()
    try:
        mirrored = make_image([random_layer(50_000)])
        push(upstream.session, upstream.url, "team/app", mirrored, "1.0")
        registry = start_registry(pull_through_config([{"url": upstream.url}], extra=_tracing(receiver)))

        # A push: one blob (monolithic upload), the config blob, then the manifest.
        local = make_image([random_layer(30_000)])
        push(registry.session, registry.url, "local/app", local, "v1")
        # A pull-through miss: the manifest and a layer, fetched from the upstream on the way.
        manifest = registry.get("/v2/cache/team/app/manifests/1.0", headers={"Accept": mirrored.media_type})
        assert manifest.status_code == 200, manifest.text
        layer = next(iter(mirrored.layers))
        digest = "sha256:" + hashlib.sha256(layer).hexdigest()
        assert registry.get(f"/v2/cache/team/app/blobs/{digest}").content == layer
        # A 4xx: its error detail names the trace.
        missing = registry.get("/v2/local/app/manifests/absent")
        assert missing.status_code == 404
        trace_id = missing.json()["errors"][0]["detail"]["trace_id"]
        assert registry.stop() == 0  # flushes the last spans
    finally:
        upstream.stop()

    assert receiver.content_types == {"application/x-protobuf"}
    every = receiver.roots()
    roots = [r for r in every if r.kind == SERVER]  # one per request; the others are housekeeping
    assert {r.name for r in every if r.kind != SERVER} <= {"storage.purge_temporary", "storage.close",
                                                          "storage.walk", "storage.list_dir",
                                                          "pull_times.flush"}

    put = _root(roots, "manifest", "PUT", "/local/app/manifests/v1")
    assert put.attributes["http.response.status_code"] == 201
    assert put.attributes["registry.namespace"] == "local/app"
    assert put.attributes["http.route"] == "manifest"
    assert _names(put)[:2] == ["authenticate", "authorize"]
    storage = [s.name for s in put.descendants() if s.name.startswith("storage.")]
    assert "storage.put" in storage or "storage.create" in storage, storage
    upload = [r for r in roots if r.name == "upload_start" and r.attributes["http.request.method"] == "POST"]
    assert len(upload) == 2 and all(u.attributes["http.response.status_code"] == 202 or
                                    u.attributes["http.response.status_code"] == 201 for u in upload)
    assert all(any(s.name.startswith("storage.") for s in u.descendants()) for u in upload)

    miss = _root(roots, "manifest", "GET", "/cache/team/app/manifests/1.0")
    upstream_spans = [s for s in miss.descendants() if s.name.startswith("upstream ")]
    assert upstream_spans, [s.name for s in miss.descendants()]
    assert all(s.attributes["upstream.url"] == upstream.url for s in upstream_spans)
    assert any(s.attributes.get("http.response.status_code") == 200 for s in upstream_spans)
    assert any(s.name.startswith("storage.") for s in miss.descendants())  # it was stored on the way
    blob = _root(roots, "blob", "GET", f"/cache/team/app/blobs/{digest}")
    assert any(s.name == "upstream GET" and s.attributes["url.path"].endswith(digest)
               for s in blob.descendants()), [s.name for s in blob.descendants()]
    for span in [put, miss, blob]:
        assert all(d.trace_id == span.trace_id for d in span.descendants())

    absent = _root(roots, "manifest", "GET", "/local/app/manifests/absent")
    assert absent.attributes["http.response.status_code"] == 404
    assert absent.status_code == 0  # a 4xx is the client's answer, not a failed span (STATUS_CODE_UNSET)
    assert absent.trace_id == trace_id
    access = [json.loads(line) for line in registry.logs().splitlines() if '"registry.access"' in line]
    [line] = [a for a in access if a["path"] == "/v2/local/app/manifests/absent"]
    assert line["trace_id"] == trace_id


def test_traces_url() -> None:
    assert traces_url("http://collector:4318") == "http://collector:4318/v1/traces"
    assert traces_url("http://collector:4318/") == "http://collector:4318/v1/traces"
    assert traces_url("https://otel.example/prefix/v1/traces") == "https://otel.example/prefix/v1/traces"


def test_errors_carry_no_trace_id_without_tracing(registry: RegistryProcess) -> None:
    missing = registry.get("/v2/local/app/manifests/absent")
    assert missing.status_code == 404
    assert "detail" not in missing.json()["errors"][0]
    assert '"trace_id"' not in registry.logs()
