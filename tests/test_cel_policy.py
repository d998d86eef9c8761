"""CEL access policies: compilation, variables, default_allow semantics, fail-closed, decision caching."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher

from app import errors
from app.auth.identity import Identity
from app.cel_policy import CompiledPolicy, activation, check_rules
from app.config import AccessPolicy, Config, ConfigError, load
from app.policy import AccessRequest, Authorizer

ALICE = Identity(id="alice-id", username="alice", client_ip="10.0.0.7")
CI = Identity(client_ip="10.0.0.8", common_names=("runner-1",), organizations=("ci", "acme"))
ANONYMOUS = Identity(client_ip="10.0.0.9")


def policy(*rules: str, default_allow: bool = False) -> CompiledPolicy:
    return CompiledPolicy(AccessPolicy(default_allow=default_allow, rules=list(rules)), "test")


def variables(identity: Identity, **request: Any) -> dict[str, Any]:
    return activation(identity.as_variables(), AccessRequest(**{"action": "get-blob", **request}).variables())


@pytest.mark.parametrize("rule", [
    'identity.username == "alice"',
    'identity.id == "alice-id"',
    'identity.client_ip == "10.0.0.7"',
    'request.action in ["get-blob", "get-manifest"]',
    '["get-blob"].exists(a, a == request.action)',
    'request.namespace.startsWith("team/")',
    'request.digest == "sha256:' + "a" * 64 + '"',
    'request.reference == null && request.uuid == null && request.from == null',
    'request.n == 10 && request.last == "v1" && request.artifact_type == "application/x"',
    'identity.certificate.common_names.size() == 0 && identity.certificate.organizations == []',
    'identity.oidc.provider_name == null && identity.oidc.claims == {}',
    "identity.username == 'alice'",  # seed 000 style single quotes
])
def test_every_variable_is_available(rule: str) -> None:
    values = variables(ALICE, namespace="team/app", digest="sha256:" + "a" * 64, n=10, last="v1",
                       artifact_type="application/x")
    assert policy(rule).allows(values) is True


def test_lists_support_in_and_contains() -> None:
    for rule in ('"ci" in identity.certificate.organizations',
                 'identity.certificate.organizations.contains("ci")',
                 'identity.certificate.organizations.exists(o, o == "ci")',
                 'identity.certificate.common_names.all(cn, cn.startsWith("runner-"))'):
        assert policy(rule).allows(variables(CI, namespace="x")) is True, rule
        assert policy(rule.replace('"ci"', '"ops"').replace('"runner-"', '"x"')).allows(
            variables(CI, namespace="x")) is False, rule


def test_default_allow_false_first_true_rule_allows() -> None:
    rules = ('identity.username == "bob"', 'identity.username == "alice"')
    assert policy(*rules).allows(variables(ALICE)) is True
    assert policy(*rules).allows(variables(ANONYMOUS)) is False
    assert policy().allows(variables(ALICE)) is False  # no rules: default


def test_default_allow_true_first_true_rule_denies() -> None:
    rules = ('request.action == "delete-manifest"', 'identity.username == null')
    assert policy(*rules, default_allow=True).allows(variables(ALICE, action="get-blob")) is True
    assert policy(*rules, default_allow=True).allows(variables(ALICE, action="delete-manifest")) is False
    assert policy(*rules, default_allow=True).allows(variables(ANONYMOUS)) is False
    assert policy(default_allow=True).allows(variables(ANONYMOUS)) is True


def test_rule_errors_and_non_booleans_fail_closed(caplog: pytest.LogCaptureFixture) -> None:
    failing = ['identity.oidc.claims.repository == "acme/app"',  # no such key: evaluation error
               "identity.username",  # a string, not a boolean
               "1 / 0 == 1",
               'identity.username.startsWith("a") && int("x") == 1']
    with caplog.at_level(logging.WARNING, logger="registry.policy"):
        for rule in failing:
            # Allow mode: an error never allows (a later rule still may).
            assert policy(rule).allows(variables(ALICE)) is False, rule
            assert policy(rule, 'identity.username == "alice"').allows(variables(ALICE)) is True, rule
            # Deny mode: an error denies.
            assert policy(rule, default_allow=True).allows(variables(ALICE)) is False, rule
    assert "counts against the caller" in caplog.text


@pytest.mark.parametrize(("rule", "reason"), [
    ('identity.username == ', "does not compile: line 1, column"),
    ('identity.username == "a" &&', "does not compile"),
    ('identiy.username == "a"', "unknown variable identiy"),
    ('request.namespce == "a"', "unknown variable request.namespce"),
    ('identity.certificate.orgs.contains("a")', "unknown variable identity.certificate.orgs"),
    ('identity.user == "a"', "unknown variable identity.user"),
])
def test_bad_rules_are_rejected_naming_rule_and_position(rule: str, reason: str) -> None:
    with pytest.raises(ValueError) as raised:
        check_rules(['request.action == "get-blob"', rule])
    assert "rule 2" in str(raised.value) and reason in str(raised.value)


def test_bad_rule_is_a_config_error_naming_file_and_key(tmp_path: Path) -> None:
    file = tmp_path / "config.toml"
    file.write_text('[repository."team".access_policy]\nrules = ["identity.username == \'a\'", '
                    '"identity.username =="]\n')
    with pytest.raises(ConfigError) as raised:
        load([file])
    message = str(raised.value)
    assert str(file) in message and 'repository.team.access_policy.rules' in message
    assert "rule 2" in message and "line 1, column" in message


def test_request_field_analysis_decides_cacheability() -> None:
    assert policy('identity.username == "a" && request.action == "get-blob"').cacheable
    assert policy('request.namespace.startsWith("x/")', '"ci" in identity.certificate.organizations'
                  ).cacheable
    assert not policy('request.digest == "x"').cacheable
    assert not policy('has(request.reference)').cacheable
    assert not policy('request["namespace"] == "x"').cacheable  # `request` not used as request.<field>
    assert not policy('"x" == "y"', 'request.n > 10').cacheable
    assert policy('request.action == "x"').reads_namespace is False
    assert policy('request.namespace == "x"').reads_namespace is True


# --- the Authorizer -----------------------------------------------------------------------------
def config(**data: Any) -> Config:
    return Config.model_validate(data)


async def decide(authorizer: Authorizer, identity: Identity, action: str, namespace: str | None) -> str:
    try:
        await authorizer.authorize(identity, AccessRequest(action=action, namespace=namespace))
    except errors.RegistryError as exc:
        return f"{exc.status} {exc.code}"
    return "allowed"


async def test_global_then_repository_policy() -> None:
    authorizer = Authorizer(config(
        **{"global": {"access_policy": {"rules": ['identity.username != null']}},
           "auth": {"identity": {"a": {"username": "alice", "password": _HASH}}},
           "repository": {"team": {"access_policy": {"rules": ['request.action == "get-blob"']}},
                          "locked": {}}}))
    assert await decide(authorizer, ALICE, "get-blob", "team/app") == "allowed"
    assert await decide(authorizer, ALICE, "put-manifest", "team/app") == "403 DENIED"
    assert await decide(authorizer, ALICE, "get-blob", "locked") == "403 DENIED"  # no access_policy
    assert await decide(authorizer, ALICE, "get-blob", "elsewhere") == "allowed"  # global alone
    assert await decide(authorizer, ALICE, "list-catalog", None) == "allowed"
    denied = ANONYMOUS
    assert await decide(authorizer, denied, "get-blob", "team/app") == "401 UNAUTHORIZED"
    with pytest.raises(errors.RegistryError) as raised:
        await authorizer.authorize(denied, AccessRequest(action="get-api-version"))
    assert raised.value.status == 401  # its challenge is added for the request by the HTTP layer


async def test_without_global_policy() -> None:
    authorizer = Authorizer(config(
        auth={"identity": {"a": {"username": "alice", "password": _HASH}}},
        repository={"team": {"access_policy": {"default_allow": True}}}))
    assert await decide(authorizer, ANONYMOUS, "get-blob", "elsewhere") == "404 NAME_UNKNOWN"
    assert await decide(authorizer, ANONYMOUS, "put-manifest", "elsewhere") == "404 NAME_UNKNOWN"
    assert await decide(authorizer, ANONYMOUS, "get-blob", "team") == "allowed"
    # GET /v2/ asks anonymous callers for credentials (docker login), answers identified ones.
    assert await decide(authorizer, ANONYMOUS, "get-api-version", None) == "401 UNAUTHORIZED"
    assert await decide(authorizer, ALICE, "get-api-version", None) == "allowed"
    assert await decide(authorizer, ALICE, "list-catalog", None) == "403 DENIED"


async def test_zero_config_allows_everything() -> None:
    authorizer = Authorizer(Config())
    assert await decide(authorizer, ANONYMOUS, "delete-manifest", "any/thing") == "allowed"
    assert authorizer.namespace_independent


async def test_decisions_are_cached_per_identity_action_namespace() -> None:
    rules = ['identity.username == "alice"']
    authorizer = Authorizer(config(**{"global": {"access_policy": {"rules": rules}}}))
    rule = authorizer.global_policy.rules[0]  # type: ignore[union-attr]
    calls = 0
    evaluate = rule.evaluate

    def counting(values: dict[str, Any]) -> bool | None:
        nonlocal calls
        calls += 1
        return evaluate(values)

    rule.evaluate = counting  # type: ignore[method-assign]
    for _ in range(5):
        assert await decide(authorizer, ALICE, "get-blob", "a") == "allowed"
    assert calls == 1
    assert await decide(authorizer, ALICE, "get-blob", "b") == "allowed"
    assert await decide(authorizer, ALICE, "get-manifest", "a") == "allowed"
    assert await decide(authorizer, ANONYMOUS, "get-blob", "a") == "401 UNAUTHORIZED"
    assert calls == 4


async def test_decisions_reading_other_fields_are_not_cached() -> None:
    authorizer = Authorizer(config(**{"global": {"access_policy": {
        "rules": ['request.reference == "v1"']}}}))
    first = AccessRequest(action="get-manifest", namespace="a", reference="v1")
    second = AccessRequest(action="get-manifest", namespace="a", reference="v2")
    await authorizer.authorize(ALICE, first)
    with pytest.raises(errors.RegistryError):
        await authorizer.authorize(ALICE, second)
    assert len(authorizer.decisions) == 0


def test_namespace_independence() -> None:
    assert Authorizer(config(**{"global": {"access_policy": {
        "rules": ['request.action == "get-blob"']}}})).namespace_independent
    assert not Authorizer(config(**{"global": {"access_policy": {
        "rules": ['request.namespace == "a"']}}})).namespace_independent
    assert not Authorizer(config(repository={"a": {"access_policy": {"default_allow": True}}})
                          ).namespace_independent


_HASH = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash("password")
