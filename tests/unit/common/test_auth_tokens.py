"""The tokens file and who a call acts for."""

from __future__ import annotations

import grpc
import pytest

from internvl_serve.common.auth import CallerError, TokenTable, caller_tenant

A = "a" * 20
B = "b" * 20
SERVICE = "s" * 20


def _table(tmp_path, text: str) -> TokenTable:
    path = tmp_path / "tokens"
    path.write_text(text)
    return TokenTable.from_file(path)


def test_lines_comments_and_the_default_tenant(tmp_path):
    table = _table(tmp_path, f"# header\n\n{A} alice   # a comment\n{B}\n{SERVICE} *\n")
    assert table.lookup(A).tenant == "alice" and table.lookup(B).tenant == "default"
    assert table.lookup(SERVICE).tenant == "*" and table.lookup("x" * 20) is None


@pytest.mark.parametrize(
    "text,message",
    [
        ("short alice\n", "line 1: a token must be at least 16"),
        (f"{A} alice extra\n", "line 1: expected `TOKEN .TENANT.`"),
        (f"{A} al:ice\n", "line 1: tenant 'al:ice'"),
        (f"{A} alice\n{A} bob\n", "line 2: this token is listed twice"),
        ("# only comments\n", "no tokens in it"),
    ],
)
def test_bad_files_name_the_line(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        _table(tmp_path, text)


def test_who_a_call_acts_for(tmp_path):
    table = _table(tmp_path, f"{A} alice\n{SERVICE} *\n")
    bearer = lambda token: ("authorization", f"Bearer {token}")  # noqa: E731
    assert caller_tenant(table, (bearer(A),)) == "alice"
    assert caller_tenant(table, (bearer(A), ("internvl-tenant", "alice"))) == "alice"
    assert caller_tenant(table, (bearer(SERVICE), ("internvl-tenant", "bob"))) == "bob"  # a service names it
    assert caller_tenant(table, (bearer(SERVICE),)) == "default"
    assert caller_tenant(None, (("internvl-tenant", "bob"),)) == "bob"  # no auth: callers are trusted
    assert caller_tenant(None, ()) == "default"
    for metadata in [(), (("authorization", A),), (bearer("x" * 20),), (("authorization", "Bearer "),)]:
        with pytest.raises(CallerError) as err:
            caller_tenant(table, metadata)
        assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(CallerError) as err:
        caller_tenant(table, (bearer(SERVICE), ("internvl-tenant", "not ok")))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_a_tenant_token_cannot_act_for_another_tenant(tmp_path):
    """E.g. a decoder given a tenant's token instead of a service token: refused, never one shared scope."""
    table = _table(tmp_path, f"{A} alice\n")
    with pytest.raises(CallerError) as err:
        caller_tenant(table, (("authorization", f"Bearer {A}"), ("internvl-tenant", "bob")))
    assert err.value.code == grpc.StatusCode.PERMISSION_DENIED and "tenant `*`" in str(err.value)


def test_a_client_facing_service_without_tokens_has_one_tenant():
    assert caller_tenant(None, (("internvl-tenant", "bob"),), trust_named_tenant=False) == "default"
