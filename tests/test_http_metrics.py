"""The HTTP metrics on /metrics after a push and a pull through a real server: every family, with
bounded labels (the route is the router's kind, never a path) and the counts that match what was
sent, down to the body bytes (also for blobs sent with sendfile, which bypasses aiohttp's writer)."""

from __future__ import annotations

import json
from collections import Counter

from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.oci import make_image, random_layer
from tests.helpers.server import RegistryProcess
from tests.helpers.upstreams import push


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def test_requests_latency_in_flight_and_bytes_after_a_push_and_a_pull(registry: RegistryProcess) -> None:
    image = make_image([random_layer(700_000), random_layer(20_000)])
    push(registry.session, registry.url, "team/app", image, "v1")
    pulled = registry.get("/v2/team/app/manifests/v1", headers={"Accept": image.media_type})
    assert pulled.content == image.manifest
    assert registry.head("/v2/team/app/manifests/v1", headers={"Accept": image.media_type}).status_code == 200
    for digest, blob in image.blobs.items():
        assert registry.get(f"/v2/team/app/blobs/{digest}").content == blob
    assert registry.get("/v2/no/such/endpoint/at/all").status_code == 404
    access = [json.loads(line) for line in registry.logs().splitlines() if '"registry.access"' in line]

    scrape = registry.get("/metrics")
    assert scrape.status_code == 200
    samples = _samples(scrape.text)
    blobs = len(image.blobs)

    requests_total = {tuple(sorted(labels.items())): value
                      for labels, value in samples["http_requests_total"]}
    expected = Counter({
        ("POST", "upload_start", "202"): blobs, ("PUT", "upload", "201"): blobs,
        ("PUT", "manifest", "201"): 1, ("GET", "manifest", "200"): 1, ("HEAD", "manifest", "200"): 1,
        ("GET", "blob", "200"): blobs, ("GET", "unmatched", "404"): 1,
    })
    for (method, route, status), count in expected.items():
        key = (("method", method), ("route", route), ("status", status))
        assert requests_total.get(key) == count, (key, requests_total)
    # Every request the server logged before this scrape is counted once (health probes included).
    assert sum(requests_total.values()) == len(access)
    assert all("/" not in labels["route"] for labels, _ in samples["http_requests_total"])

    counts = {labels["route"] + " " + labels["method"]: v
              for labels, v in samples["http_request_duration_milliseconds_count"]}
    assert counts["blob GET"] == blobs and counts["manifest PUT"] == 1
    for route_method in counts:
        route, method = route_method.split()
        buckets = [(float(labels["le"]), value)
                   for labels, value in samples["http_request_duration_milliseconds_bucket"]
                   if labels["route"] == route and labels["method"] == method]
        assert [v for _, v in sorted(buckets)] == sorted(v for _, v in buckets)  # cumulative
        assert max(buckets)[0] == float("inf") and max(buckets)[1] == counts[route_method]
    sums = {labels["route"] + " " + labels["method"]: v
            for labels, v in samples["http_request_duration_milliseconds_sum"]}
    assert sums["blob GET"] > 0
    assert ({}, 1.0) in samples["http_requests_in_flight"]  # the scrape itself

    storage = {labels["direction"]: value for labels, value in samples["registry_storage_bytes_total"]}
    pushed = sum(len(b) for b in image.blobs.values()) + len(image.manifest)
    assert storage["in"] == pushed == sum(line["bytes_in"] for line in access)
    assert storage["out"] == sum(line["bytes_out"] for line in access)
    sent_blobs = [line["bytes_out"] for line in access
                  if line["path"].startswith("/v2/team/app/blobs/sha256")]
    assert sorted(sent_blobs) == sorted(len(b) for b in image.blobs.values())  # sendfile counted
    [head] = [line for line in access if line["method"] == "HEAD"]
    assert head["bytes_out"] == 0
