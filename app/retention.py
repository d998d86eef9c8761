"""Retention policies (SPEC §9.3): which tags of a namespace are kept. Domain code, no I/O.

`retention_policy.rules` are CEL expressions, global (`[global.retention_policy]`) and per repository
(`[repository."<prefix>".retention_policy]`, the longest matching prefix). A tag is kept when any rule
of the global policy or of its repository's policy is true for it; otherwise it is removed. No rule at
all for a namespace: everything is kept. A rule that fails when evaluated (a type error, say) keeps the
tag and is reported: a broken rule never deletes anything.

Variables, per tag:
- `image.tag` (string), `image.pushed_at`, `image.last_pulled_at` (int seconds since the epoch;
  `last_pulled_at` is 0 when the tag was never pulled);
- `last_pushed`: the namespace's tags, most recently pushed first;
- `last_pulled`: the namespace's tags that were ever pulled, most recently pulled first.
Functions: `now()` (int seconds since the epoch, one value for the whole run), `days(n)`, `hours(n)`,
`minutes(n)` (int seconds), `top(s, list, k)` (`s` is among the first `k` items of `list`), and CEL's
own (`size(list)`, `x in list`, `startsWith`, `matches` ...).

Rules are parsed when the configuration loads (a typo in a variable or a function name, or a wrong
number of arguments, is a configuration error naming the rule) and compiled once per rule text; they
are evaluated with cel-python's interpreted runner on one thread at a time (app/cel_policy.py says why).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from app.cel_policy import TYPE_NAMES, _environment_, _macro_variables, _member_name, compile_tree, rule_label
from app.config import Config, RepositoryConfig, RetentionPolicy
from app.repositories import RepositoryMap

if TYPE_CHECKING:
    import celpy
    import lark

VARIABLES = frozenset({"image", "last_pushed", "last_pulled"})
IMAGE_FIELDS = frozenset({"tag", "pushed_at", "last_pulled_at"})
# Our functions and how many arguments each takes.
FUNCTIONS = {"now": 0, "days": 1, "hours": 1, "minutes": 1, "top": 3}
# CEL's global functions and macros (member functions such as `startsWith` are not checked here).
CEL_FUNCTIONS = frozenset({"size", "has", "int", "uint", "double", "string", "bytes", "bool", "type",
                           "duration", "timestamp", "dyn", "matches", "list", "map"})


@dataclass(frozen=True, slots=True)
class TagFacts:
    """What the rules know about one tag."""

    tag: str
    digest: str
    pushed_at: float  # seconds since the epoch
    last_pulled_at: float = 0.0  # 0: never pulled


@dataclass(frozen=True, slots=True)
class RuleFailure:
    rule: str  # e.g. `repository "team" rule 2`
    text: str
    tag: str
    reason: str


@dataclass(frozen=True, slots=True)
class Decision:
    facts: TagFacts
    keep: bool
    reason: str  # the rule that kept it, "a rule failed", or "no rule keeps it"


@dataclass
class Verdict:
    decisions: list[Decision] = field(default_factory=list)
    failures: list[RuleFailure] = field(default_factory=list)

    @property
    def removed(self) -> list[Decision]:
        return [d for d in self.decisions if not d.keep]


# --- parsing and checking ---------------------------------------------------------------------
def _problems(tree: lark.Tree) -> list[str]:
    import lark

    problems: list[str] = []
    bound = _macro_variables(tree)

    def visit(node: lark.Tree, ancestors: list[lark.Tree]) -> None:
        if node.data == "ident" and ancestors and ancestors[-1].data == "primary":
            name = str(node.children[0])
            if name == "image":
                member = _member_name(ancestors, 1)
                if member is not None and member not in IMAGE_FIELDS:
                    problems.append(f"unknown variable image.{member} (known: "
                                    f"{', '.join(sorted(IMAGE_FIELDS))})")
            elif name not in VARIABLES and name not in bound and name not in TYPE_NAMES:
                problems.append(f"unknown variable {name} (known: {', '.join(sorted(VARIABLES))})")
        elif node.data == "ident_arg":
            name = str(node.children[0])
            arguments = node.children[1] if len(node.children) > 1 else None
            count = len(arguments.children) if isinstance(arguments, lark.Tree) else 0
            if name in FUNCTIONS:
                if count != FUNCTIONS[name]:
                    problems.append(f"{name}() takes {FUNCTIONS[name]} argument"
                                    f"{'' if FUNCTIONS[name] == 1 else 's'}, not {count}")
            elif name not in CEL_FUNCTIONS:
                problems.append(f"unknown function {name}() (known: "
                                f"{', '.join(sorted(FUNCTIONS))}, and CEL's own)")
        for child in node.children:
            if isinstance(child, lark.Tree):
                visit(child, [*ancestors, node])

    visit(tree, [])
    return list(dict.fromkeys(problems))


def parse_rule(text: str, position: int) -> lark.Tree:
    """Parse and check one rule; ValueError naming the rule (1-based position) and the reason."""
    tree = compile_tree(text, position)
    problems = _problems(tree)
    if problems:
        raise ValueError(f"{rule_label(text, position)}: {'; '.join(problems)}")
    return tree


def check_rules(rules: list[str]) -> list[str]:
    """Pydantic validator helper (RetentionPolicy.rules): every rule must parse and check."""
    for position, text in enumerate(rules, start=1):
        parse_rule(text, position)
    return rules


# --- the functions ----------------------------------------------------------------------------
class _Clock:
    """`now()` of the run being evaluated (one value for every tag of a run)."""

    value = 0


def _seconds(per: int) -> Any:
    def convert(n: Any) -> Any:
        from celpy import celtypes

        if isinstance(n, celtypes.BoolType) or not isinstance(
                n, celtypes.IntType | celtypes.UintType | celtypes.DoubleType):
            raise TypeError(f"expects a number, not {type(n).__name__}")
        return celtypes.IntType(int(n * per))

    return convert


def _now() -> Any:
    from celpy import celtypes

    return celtypes.IntType(_Clock.value)


def _top(s: Any, items: Any, k: Any) -> Any:
    from celpy import celtypes

    if not isinstance(items, list) or isinstance(k, celtypes.BoolType) or not isinstance(
            k, celtypes.IntType | celtypes.UintType):
        raise TypeError("top(s, list, k) expects a list and an int")
    return celtypes.BoolType(int(k) > 0 and s in items[:int(k)])


FUNCTION_IMPLEMENTATIONS = {"now": _now, "days": _seconds(86400), "hours": _seconds(3600),
                            "minutes": _seconds(60), "top": _top}


# --- compiled rules and policies --------------------------------------------------------------
class CompiledRule:
    def __init__(self, text: str, label: str, program: celpy.Runner) -> None:
        self.text = text
        self.label = label
        self._program = program

    def evaluate(self, activation: dict[str, Any]) -> tuple[bool | None, str]:
        """(True or False, ""), or (None, why) when the rule fails or is not a boolean."""
        from celpy import celtypes

        try:
            value = self._program.evaluate(activation)
        except Exception as exc:  # CELEvalError and whatever the interpreter lets through
            return None, _reason(exc)
        if isinstance(value, celtypes.BoolType):
            return bool(value), ""
        return None, f"the result is {type(value).__name__}, not a boolean"


def _reason(exc: Exception) -> str:
    """A CELEvalError's message and its cause, in one short line (the whole text can quote the
    activation)."""
    args = exc.args
    if len(args) >= 3 and isinstance(args[0], str) and isinstance(args[2], tuple) and args[2]:
        text = f"{args[0]}: {args[2][0]}"
    else:
        text = str(args[0]) if args else type(exc).__name__
    return " ".join(text.split())[:500]


_programs: dict[str, Any] = {}  # rule text -> compiled program (compiled once, whatever the reloads)


def _compile(text: str, position: int, where: str) -> CompiledRule:
    program = _programs.get(text)
    if program is None:
        try:
            tree = parse_rule(text, position)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        program = _programs[text] = _environment_().program(tree, functions=FUNCTION_IMPLEMENTATIONS)
    return CompiledRule(text, f"{where} rule {position}", program)


def _rules(policy: RetentionPolicy | None, where: str) -> list[CompiledRule]:
    if policy is None:
        return []
    return [_compile(text, n, where) for n, text in enumerate(policy.rules, start=1)]


class RetentionPolicies:
    """The compiled retention rules of one configuration: global ones and per repository prefix."""

    def __init__(self, global_policy: RetentionPolicy | None,
                 repositories: dict[str, RepositoryConfig] | None = None) -> None:
        repositories = repositories or {}
        self._global = _rules(global_policy, "global retention_policy")
        self._repositories = RepositoryMap(repositories)
        self._per_prefix = {prefix: _rules(repo.retention_policy, f"repository {prefix!r} retention_policy")
                            for prefix, repo in repositories.items()}

    @classmethod
    def from_config(cls, config: Config) -> RetentionPolicies:
        return cls(config.global_.retention_policy, config.repository)

    @property
    def configured(self) -> bool:
        """Some rule exists (else retention keeps everything and need not even look)."""
        return bool(self._global) or any(self._per_prefix.values())

    def rules_for(self, namespace: str) -> list[CompiledRule]:
        found = self._repositories.find(namespace)
        own = self._per_prefix.get(found[0], []) if found is not None else []
        return [*self._global, *own]

    def decide(self, namespace: str, tags: Sequence[TagFacts], now: float) -> Verdict:
        """Which of a namespace's tags are kept, evaluated at `now` (seconds since the epoch)."""
        rules = self.rules_for(namespace)
        verdict = Verdict()
        if not rules:
            verdict.decisions = [Decision(facts, True, "no retention rule applies") for facts in tags]
            return verdict
        import celpy

        last_pushed = celpy.json_to_cel(_newest_first(tags, "pushed_at"))
        last_pulled = celpy.json_to_cel(_newest_first([t for t in tags if t.last_pulled_at > 0],
                                                      "last_pulled_at"))
        _Clock.value = int(now)
        for facts in tags:
            activation = {
                "image": celpy.json_to_cel({"tag": facts.tag, "pushed_at": int(facts.pushed_at),
                                            "last_pulled_at": int(facts.last_pulled_at)}),
                "last_pushed": last_pushed, "last_pulled": last_pulled,
            }
            verdict.decisions.append(self._decide(rules, facts, activation, verdict.failures))
        return verdict

    @staticmethod
    def _decide(rules: Iterable[CompiledRule], facts: TagFacts, activation: dict[str, Any],
                failures: list[RuleFailure]) -> Decision:
        failed = False
        for rule in rules:
            outcome, reason = rule.evaluate(activation)
            if outcome is True:
                return Decision(facts, True, f"kept by {rule.label}")
            if outcome is None:
                failed = True
                failures.append(RuleFailure(rule.label, rule.text, facts.tag, reason))
        if failed:
            return Decision(facts, True, "kept: a rule failed (see the rule failures)")
        return Decision(facts, False, "no rule keeps it")


def _newest_first(tags: Iterable[TagFacts], attribute: str) -> list[str]:
    return [t.tag for t in sorted(tags, key=lambda t: (-getattr(t, attribute), t.tag))]
