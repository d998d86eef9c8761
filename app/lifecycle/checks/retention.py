"""`--retention`: the tags no retention rule keeps are removed (app/lifecycle/retention.py does it).

Each tag that goes is a finding (`expired_tag`), repaired when removed; a dry run lists them. A rule
that fails for a tag keeps the tag and is reported (`retention_rule_error`): scrub cannot repair a
rule, so the run exits 1 until the rule is fixed.
"""

from __future__ import annotations

import time

from app.lifecycle.context import ScrubContext
from app.lifecycle.report import CheckReport, Finding
from app.lifecycle.retention import enforce
from app.retention import RetentionPolicies
from app.storage import layout


async def run(ctx: ScrubContext, report: CheckReport, policies: RetentionPolicies,
              now: float | None = None) -> None:
    async def removed(namespace: str, tag: str) -> None:
        if ctx.announce is not None:  # at once: the servers stop answering the tag now
            await ctx.announce(namespace)

    result = await enforce(ctx.storage, ctx.locks, policies, dry_run=ctx.dry_run,
                           now=time.time() if now is None else now, on_removed=removed,
                           progress=ctx.progress)
    report.examined = result.examined
    for expired in result.expired:
        facts = expired.facts
        finding = report.add(Finding(
            "expired_tag", layout.tag_current_link(expired.namespace, facts.tag),
            f"tag {facts.tag!r} ({facts.digest}): pushed {_when(facts.pushed_at)}, last pulled "
            f"{_when(facts.last_pulled_at)}; no retention rule keeps it",
            namespace=expired.namespace, digest=facts.digest))
        if not ctx.dry_run:
            report.resolve(finding, expired.removed, expired.error)
    for namespace, failure in result.failures:
        report.add(Finding("retention_rule_error", layout.tag_current_link(namespace, failure.tag),
                           f"tag {failure.tag!r} kept: {failure.rule} ({failure.text!r}) failed: "
                           f"{failure.reason}", namespace=namespace))


def _when(seconds: float) -> str:
    if seconds <= 0:
        return "never"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
