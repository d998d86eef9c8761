"""CEL access-policy rules: compiled once at config load, evaluated with cel-python's interpreted runner.

The interpreted runner is used (the compiled runner keeps its state in module globals and gave wrong
results when shared across threads); rules are evaluated on the event loop thread only. A rule's
variables are checked when it compiles, so a typo (`identiy.username`, `request.namespce`) is a
configuration error instead of a rule that fails (closed) on every request. The check also tells which
request fields a rule reads: a policy that reads only `identity`, `request.action` and
`request.namespace` can have its decisions cached per (identity, action, namespace).

CEL error texts quote the whole input: they go to the log, never to a client.

cel-python (with lark, pendulum and re2: ~8 MiB resident) is imported with the first rule to compile; a
policy without rules never loads it. Two of its imports are trimmed: lark's optional `regex` backend
(celpy does not need it) is not used, and `re2` (for the CEL `matches()` function only) loads with the
first `matches()` evaluated.
"""

from __future__ import annotations

import importlib
import logging
import sys
import time
import types
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from app.config import AccessPolicy

if TYPE_CHECKING:
    import celpy
    import lark

log = logging.getLogger("registry.policy")

REQUEST_FIELDS = frozenset({"action", "namespace", "digest", "reference", "uuid", "n", "last",
                            "artifact_type", "from"})
CACHEABLE_REQUEST_FIELDS = frozenset({"action", "namespace"})
IDENTITY_FIELDS: dict[str, frozenset[str] | None] = {
    "id": None, "username": None, "client_ip": None, "groups": None,
    "certificate": frozenset({"common_names", "organizations"}),
    "oidc": frozenset({"provider_name", "claims"}),
}
TYPE_NAMES = frozenset({"int", "uint", "double", "bool", "string", "bytes", "list", "map", "null_type",
                        "type", "dyn"})
MACROS = frozenset({"exists", "all", "exists_one", "map", "filter"})
ERROR_LOG_INTERVAL = 10.0

_environment: celpy.Environment | None = None


class _OnFirstUse(types.ModuleType):
    """Stands in for a module until one of its attributes is used, then imports the real one."""

    def __getattr__(self, name: str) -> Any:
        real = sys.modules.get(self.__name__)
        if real is None or real is self:
            sys.modules.pop(self.__name__, None)
            real = importlib.import_module(self.__name__)
        return getattr(real, name)


def _environment_() -> celpy.Environment:
    global _environment
    if _environment is None:
        sys.modules.setdefault("re2", _OnFirstUse("re2"))
        if "lark" not in sys.modules:
            blocked = "regex" not in sys.modules
            if blocked:
                sys.modules["regex"] = None  # type: ignore[assignment]  # lark falls back to `re`
            try:
                import lark  # noqa: F401
            finally:
                if blocked:
                    del sys.modules["regex"]
        import celpy

        # celpy logs every evaluation step at debug level (activations included): noise, and a cost.
        logging.getLogger("celpy").setLevel(logging.WARNING)
        _environment = celpy.Environment()
    return _environment


@dataclass
class RuleAnalysis:
    request_fields: set[str] = field(default_factory=set)
    whole_request: bool = False  # `request` used other than as `request.<field>`
    problems: list[str] = field(default_factory=list)


def _member_name(ancestors: list[lark.Tree], depth: int) -> str | None:
    """For an identifier `x` (ancestors end with member, primary): the name of its `depth`-th member
    access, e.g. depth 1 gives `field` in `x.field`, depth 2 gives `sub` in `x.field.sub`."""
    index = -1 - 2 * depth
    if len(ancestors) < -index:
        return None
    node, inner = ancestors[index], ancestors[index + 1]
    if node.data != "member_dot" or node.children[0] is not inner:
        return None
    import lark

    token = node.children[1]
    return str(token) if isinstance(token, lark.Token) else None


def _macro_variables(tree: lark.Tree) -> set[str]:
    import lark

    names: set[str] = set()
    for node in tree.iter_subtrees():
        if node.data != "member_dot_arg" or len(node.children) < 3:
            continue
        method, arguments = node.children[1], node.children[2]
        if str(method) in MACROS and isinstance(arguments, lark.Tree) and arguments.children:
            first = arguments.children[0]
            idents = [t for t in first.iter_subtrees() if t.data == "ident"] \
                if isinstance(first, lark.Tree) else []
            if len(idents) == 1:
                names.add(str(idents[0].children[0]))
    return names


def analyse(tree: lark.Tree) -> RuleAnalysis:
    import lark

    analysis = RuleAnalysis()
    bound = _macro_variables(tree)

    def visit(node: lark.Tree, ancestors: list[lark.Tree]) -> None:
        if node.data == "ident" and ancestors and ancestors[-1].data == "primary":
            name = str(node.children[0])
            if name == "request":
                request_field = _member_name(ancestors, 1)
                if request_field is None:
                    analysis.whole_request = True
                elif request_field not in REQUEST_FIELDS:
                    analysis.problems.append(f"unknown variable request.{request_field}")
                else:
                    analysis.request_fields.add(request_field)
            elif name == "identity":
                identity_field = _member_name(ancestors, 1)
                if identity_field is not None:
                    allowed = IDENTITY_FIELDS.get(identity_field, frozenset())
                    sub = _member_name(ancestors, 2)
                    if identity_field not in IDENTITY_FIELDS:
                        analysis.problems.append(f"unknown variable identity.{identity_field}")
                    elif allowed is not None and sub is not None and sub not in allowed:
                        analysis.problems.append(f"unknown variable identity.{identity_field}.{sub}")
            elif name not in bound and name not in TYPE_NAMES:
                analysis.problems.append(f"unknown variable {name}")
        for child in node.children:
            if isinstance(child, lark.Tree):
                visit(child, [*ancestors, node])

    visit(tree, [])
    return analysis


def rule_label(text: str, position: int) -> str:
    return f"rule {position} ({text[:200]!r})"


def compile_tree(text: str, position: int) -> lark.Tree:
    """The parse tree of one CEL rule (access or retention); ValueError naming the rule (1-based
    position) and where it does not compile."""
    label = rule_label(text, position)
    environment = _environment_()
    import celpy

    try:
        return environment.compile(text)
    except celpy.CELParseError as exc:
        where = f"line {exc.line}, column {exc.column}" if exc.line is not None else "syntax error"
        excerpt = " ".join(str(exc.args[0]).split()) if exc.args else ""
        raise ValueError(f"{label} does not compile: {where}: {excerpt[:200]}") from None
    except Exception as exc:  # lark raises its own errors for some inputs
        raise ValueError(f"{label} does not compile: {str(exc)[:200]}") from None


def parse_rule(text: str, position: int) -> tuple[lark.Tree, RuleAnalysis]:
    """Parse and check one rule; ValueError naming the rule (1-based position) and the reason."""
    label = rule_label(text, position)
    tree = compile_tree(text, position)
    analysis = analyse(tree)
    if analysis.problems:
        raise ValueError(f"{label}: {'; '.join(dict.fromkeys(analysis.problems))}")
    return tree, analysis


def check_rules(rules: list[str]) -> list[str]:
    """Pydantic validator helper: every rule must compile."""
    for position, text in enumerate(rules, start=1):
        parse_rule(text, position)
    return rules


class CompiledRule:
    def __init__(self, text: str, position: int, where: str) -> None:
        tree, analysis = parse_rule(text, position)
        self.text = text
        self.label = f"{where} rule {position}"
        self.analysis = analysis
        self._program = _environment_().program(tree)
        self._last_logged = -ERROR_LOG_INTERVAL
        self._suppressed = 0

    def evaluate(self, activation: dict[str, Any]) -> bool | None:
        """True or False; None when the rule errors or is not a boolean (logged, never answered)."""
        from celpy import celtypes

        try:
            value = self._program.evaluate(activation)
        except Exception as exc:  # CELEvalError and anything the interpreter lets through
            self._log_failure(f"error: {exc}")
            return None
        if isinstance(value, celtypes.BoolType):
            return bool(value)
        self._log_failure(f"result is {type(value).__name__}, not a boolean")
        return None

    def _log_failure(self, reason: str) -> None:
        now = time.monotonic()
        if now - self._last_logged < ERROR_LOG_INTERVAL:
            self._suppressed += 1
            return
        suppressed, self._suppressed, self._last_logged = self._suppressed, 0, now
        log.warning("access policy %s failed (counts against the caller): %s", self.label, reason[:2000],
                    extra={"fields": {"rule": self.text, "suppressed_since_last": suppressed}})


class CompiledPolicy:
    """`default_allow = false`: the first true rule allows. `true`: the first true rule denies."""

    def __init__(self, policy: AccessPolicy, where: str) -> None:
        self.default_allow = policy.default_allow
        try:
            self.rules = [CompiledRule(text, n, where) for n, text in enumerate(policy.rules, start=1)]
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        self.request_fields: set[str] = set()
        self.whole_request = False
        for rule in self.rules:
            self.request_fields |= rule.analysis.request_fields
            self.whole_request |= rule.analysis.whole_request

    @property
    def cacheable(self) -> bool:
        """Depends only on identity, action and namespace."""
        return not self.whole_request and self.request_fields <= CACHEABLE_REQUEST_FIELDS

    @property
    def reads_namespace(self) -> bool:
        return self.whole_request or "namespace" in self.request_fields

    def allows(self, activation: dict[str, Any]) -> bool:
        for rule in self.rules:
            outcome = rule.evaluate(activation)
            if not self.default_allow and outcome is True:
                return True
            if self.default_allow and outcome is not False:  # true, or an error: deny
                return False
        return self.default_allow


def activation(identity: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    import celpy

    return {"identity": celpy.json_to_cel(identity), "request": celpy.json_to_cel(request)}
