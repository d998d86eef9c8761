"""What a scrub found and repaired: findings per check, one summary line each, a JSON report, the exit
status (0: consistent, or made so; 1: something found and not repaired; 2: could not run)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

# Findings kept per check for the JSON report; the counts are always exact.
MAX_LISTED = 1000


@dataclass(frozen=True)
class Kind:
    """One kind of fault: how a summary names it, and what its repair is called (None: scrub cannot
    repair it and only reports it)."""

    noun: str
    plural: str
    repair: str | None  # past tense: "removed"
    future: str | None = None  # dry-run: "would be removed"


KINDS: dict[str, Kind] = {
    "stale_upload": Kind("stale upload session", "stale upload sessions", "removed"),
    "orphan_multipart_upload": Kind("orphan multipart upload", "orphan multipart uploads", "aborted"),
    "dangling_tag": Kind("tag naming a missing manifest", "tags naming a missing manifest", "removed"),
    "missing_revision_link": Kind("missing revision link", "missing revision links", "re-created"),
    "wrong_revision_link": Kind("unreadable revision link", "unreadable revision links", "rewritten"),
    "missing_layer_link": Kind("missing layer link", "missing layer links", "re-created"),
    "missing_referrer_link": Kind("missing referrer link", "missing referrer links", "re-created"),
    "dangling_referrer_link": Kind("referrer link to a missing manifest", "referrer links to a missing "
                                   "manifest", "removed"),
    "missing_manifest_blob": Kind("revision whose manifest blob is missing",
                                  "revisions whose manifest blob is missing", None),
    "missing_referenced_blob": Kind("revision referencing a missing blob",
                                    "revisions referencing a missing blob", None),
    "corrupt_blob": Kind("blob whose bytes do not match its digest", "blobs whose bytes do not match their "
                         "digest", "quarantined"),
    "unreferenced_blob": Kind("unreferenced blob", "unreferenced blobs", "removed"),
    "expired_tag": Kind("tag no retention rule keeps", "tags no retention rule keeps", "removed"),
    "retention_rule_error": Kind("tag kept because a retention rule failed",
                                 "tags kept because a retention rule failed", None),
}


@dataclass
class Finding:
    kind: str
    key: str  # the storage key concerned
    detail: str
    namespace: str | None = None
    digest: str | None = None
    repaired: bool = False
    error: str | None = None  # why a repair failed or was skipped

    def as_json(self) -> dict[str, Any]:
        found: dict[str, Any] = {"kind": self.kind, "key": self.key, "detail": self.detail,
                                 "repaired": self.repaired}
        if self.namespace is not None:
            found["namespace"] = self.namespace
        if self.digest is not None:
            found["digest"] = self.digest
        if self.error is not None:
            found["error"] = self.error
        return found


@dataclass
class CheckReport:
    name: str  # retention, uploads, tags, revisions, blobs
    unit: str  # what `examined` counts: "upload sessions", "tags" ...
    dry_run: bool
    examined: int = 0
    bytes_read: int = 0
    findings: list[Finding] = field(default_factory=list)
    found: dict[str, int] = field(default_factory=dict)
    repaired: dict[str, int] = field(default_factory=dict)
    error: str | None = None  # the check could not complete (the store failed)
    # Namespaces a repair changed (what a server serves from them): announced to the servers.
    changed: set[str] = field(default_factory=set)
    started: float = field(default_factory=time.monotonic)
    seconds: float = 0.0

    def add(self, finding: Finding) -> Finding:
        """Record a finding (before its repair: `resolve` records how that went)."""
        self.found[finding.kind] = self.found.get(finding.kind, 0) + 1
        if len(self.findings) < MAX_LISTED:
            self.findings.append(finding)
        return finding

    def resolve(self, finding: Finding, repaired: bool, error: str | None = None) -> None:
        finding.repaired, finding.error = repaired, error
        if repaired:
            self.repaired[finding.kind] = self.repaired.get(finding.kind, 0) + 1
            if finding.namespace is not None:
                self.changed.add(finding.namespace)

    def finish(self) -> None:
        self.seconds = time.monotonic() - self.started

    @property
    def found_total(self) -> int:
        return sum(self.found.values())

    @property
    def repaired_total(self) -> int:
        return sum(self.repaired.values())

    @property
    def consistent(self) -> bool:
        """Nothing left that scrub found and did not repair, and the check ran to its end."""
        return self.error is None and self.found_total == self.repaired_total

    def summary(self) -> str:
        head = f"{self.name}: {self.examined} {self.unit} examined"
        if self.bytes_read:
            head += f" ({_size(self.bytes_read)} hashed)"
        head += f" in {self.seconds:.1f} s"
        parts = []
        for kind, count in self.found.items():
            described = KINDS[kind]
            noun = described.noun if count == 1 else described.plural
            fixed = self.repaired.get(kind, 0)
            if described.repair is None:
                parts.append(f"{count} {noun} (scrub cannot repair this; see docs/gc.md)")
            elif self.dry_run:
                parts.append(f"{count} {noun} (would be {described.repair})")
            elif fixed == count:
                parts.append(f"{count} {noun} {described.repair}")
            else:
                parts.append(f"{count} {noun}, {fixed} {described.repair}, {count - fixed} not (see --json)")
        if self.error is not None:
            parts.append(f"could not finish: {self.error}")
        return head + ": " + ("; ".join(parts) if parts else "consistent")

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "unit": self.unit, "examined": self.examined,
                "bytes_hashed": self.bytes_read, "seconds": round(self.seconds, 3),
                "found": dict(self.found), "repaired": dict(self.repaired),
                "found_total": self.found_total, "repaired_total": self.repaired_total,
                "consistent": self.consistent, "error": self.error,
                "findings": [f.as_json() for f in self.findings],
                "findings_left_off": max(0, self.found_total - len(self.findings))}


@dataclass
class Report:
    dry_run: bool
    store: str
    checks: list[CheckReport] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)
    seconds: float = 0.0
    prepare_seconds: float = 0.0  # the walk of `repositories/` and the reading of every manifest

    def exit_status(self) -> int:
        if any(check.error is not None for check in self.checks):
            return 2
        return 0 if all(check.consistent for check in self.checks) else 1

    def summary_lines(self) -> list[str]:
        lines = [check.summary() for check in self.checks]
        status = self.exit_status()
        verdict = {0: "the store is consistent" if not any(c.found_total for c in self.checks)
                   else "the store was made consistent",
                   1: "found faults that were not repaired" + (" (--dry-run)" if self.dry_run else ""),
                   2: "a check could not finish"}[status]
        lines.append(f"scrub: {verdict} ({self.seconds:.1f} s)")
        return lines

    def as_json(self) -> dict[str, Any]:
        return {"store": self.store, "dry_run": self.dry_run,
                "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started_at)),
                "seconds": round(self.seconds, 3),
                "listing_and_marking_seconds": round(self.prepare_seconds, 3),
                "exit_status": self.exit_status(),
                "consistent": self.exit_status() == 0,
                "checks": [check.as_json() for check in self.checks]}


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
