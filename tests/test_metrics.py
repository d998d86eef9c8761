"""app/metrics.py: counters declared at import, prometheus_client loaded on first use, the text format.

The in-process tests use names of their own in prometheus_client's (process-wide) default registry;
what happens before the library is loaded is checked in a fresh interpreter.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid

from prometheus_client.parser import text_string_to_metric_families

from app import metrics


def _name() -> str:
    return f"registry_test_{uuid.uuid4().hex[:12]}"


def _value(text: str, sample_name: str, labels: dict[str, str]) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == sample_name and sample.labels == labels:
                return sample.value
    return None


def test_text_format_names_help_type_and_values() -> None:
    name = _name()
    counter = metrics.Counter(name, "Things that happened", ["kind", "result"])
    counter.labels("a", "ok").inc()
    counter.labels("a", "ok").inc(2)
    counter.labels("b", "failed").inc()
    body, content_type = metrics.exposition()
    text = body.decode()
    assert content_type.startswith("text/plain; version=")  # prometheus_client's CONTENT_TYPE_LATEST
    assert f"# HELP {name}_total Things that happened\n" in text
    assert f"# TYPE {name}_total counter\n" in text
    assert f'{name}_total{{kind="a",result="ok"}} 3.0\n' in text
    assert f'{name}_total{{kind="b",result="failed"}} 1.0\n' in text
    assert _value(text, f"{name}_total", {"kind": "a", "result": "ok"}) == 3.0


def test_label_values_are_escaped() -> None:
    name = _name()
    counter = metrics.Counter(name, "Escaping", ["value"])
    nasty = 'back\\slash "quoted"\nnext line'
    counter.labels(nasty).inc()
    text = metrics.exposition()[0].decode()
    assert f'{name}_total{{value="back\\\\slash \\"quoted\\"\\nnext line"}} 1.0\n' in text
    assert _value(text, f"{name}_total", {"value": nasty}) == 1.0  # and it parses back to the original


def test_increments_from_many_threads_are_all_counted() -> None:
    name = _name()
    counter = metrics.Counter(name, "Concurrent increments", ["thread"])
    threads, rounds = 8, 5_000
    start = threading.Barrier(threads)

    def work() -> None:
        start.wait()
        for _ in range(rounds):
            counter.labels("shared").inc()

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    text = metrics.exposition()[0].decode()
    assert _value(text, f"{name}_total", {"thread": "shared"}) == threads * rounds


_FRESH = """
import sys, threading
from app import metrics
from app.auth import chain  # declares registry_auth_attempts
assert "prometheus_client" not in sys.modules, "loaded at import"
assert not metrics.loaded()

# The first use races from many threads: one registration, every increment counted.
early = metrics.Counter("registry_test_early", "Declared before the library is loaded", ["who"])
start = threading.Barrier(8)
def work():
    start.wait()
    for _ in range(1000):
        early.labels("t").inc()
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
assert "prometheus_client" in sys.modules and metrics.loaded()

late = metrics.Counter("registry_test_late", "Declared after the library is loaded", ["who"])
late.labels("x").inc(5)
text = metrics.exposition()[0].decode()
assert 'registry_test_early_total{who="t"} 8000.0' in text, text
assert 'registry_test_late_total{who="x"} 5.0' in text, text
assert "# TYPE registry_auth_attempts_total counter" in text, text  # declared, never incremented
assert "process_resident_memory_bytes" in text or sys.platform != "linux", text
print("ok")
"""


def test_prometheus_client_is_loaded_on_first_use_only() -> None:
    result = subprocess.run([sys.executable, "-c", _FRESH], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
