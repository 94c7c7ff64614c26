"""Route table: defaults from the zCompute API notes, user rules first, refusals."""

from __future__ import annotations

import pytest

from proxy.config import RouteRule, parse_route_flag
from proxy.errors import BadRequest
from proxy.routes import RouteTable

TABLE = RouteTable([], default_project="dev", identity_path="/api/v2/identity/auth")


@pytest.mark.parametrize(("path", "scope"), [
    ("/api/v2/compute/vms", "project:dev"),
    ("/api/v2/vms/123/action", "project:dev"),
    ("/api/v3/volumes?limit=5", "project:dev"),
    ("/api/openstack/networking/v2.0/networks", "project:dev"),
    ("/api/v2/identity/users", "account"),
    ("/api/v2/identity/users/myself/projects", "account"),
    ("/api/v2/quotas/limits/domains/abc", "account"),
    ("/api/v2/quotas/limits/projects/abc", "project:dev"),
    ("/api/v2/cluster/health", "account"),
    ("/api/v2/nodes", "account"),
    ("/api/v2/aws/ec2/", "none"),
    ("/api/v2/ec2/", "none"),
    ("/api/v2/identity/auth", "none"),
    ("/api/v2/%69dentity/users", "account"),  # unreserved escapes match like their letters
])
def test_default_rules(path: str, scope: str) -> None:
    """The built-in rules follow zcompute-api.md §4."""
    assert str(TABLE.resolve("GET", path).scope) == scope


def test_user_rules_come_first_and_methods_filter() -> None:
    """A configured rule overrides the defaults; a method rule only matches that method."""
    table = RouteTable([parse_route_flag("POST /api/v2/compute/vms=account"),
                        RouteRule(pattern="/api/v2/engines/*/x", scope="project:ops")],
                       default_project="dev")
    assert str(table.resolve("POST", "/api/v2/compute/vms").scope) == "account"
    assert str(table.resolve("GET", "/api/v2/compute/vms").scope) == "project:dev"
    assert str(table.resolve("GET", "/api/v2/engines/e1/x").scope) == "project:ops"
    assert str(table.resolve("GET", "/api/v2/engines/e1/e2/x").scope) == "project:dev"


def test_project_header_selects_the_project() -> None:
    """X-Zcompute-Project picks the project for `project` routes only."""
    assert str(TABLE.resolve("GET", "/api/v2/compute/vms", "prod").scope) == "project:prod"
    assert str(TABLE.resolve("GET", "/api/v2/identity/users", "prod").scope) == "account"
    with pytest.raises(BadRequest):
        TABLE.resolve("GET", "/api/v2/compute/vms", "bad name/../x")


def test_no_default_project_is_a_clear_error() -> None:
    """A project route without any project says how to set one."""
    with pytest.raises(BadRequest) as caught:
        RouteTable([], default_project=None).resolve("GET", "/api/v2/compute/vms")
    assert caught.value.hint is not None
    assert "X-Zcompute-Project" in caught.value.hint


def test_explorer_prefix_is_stripped_but_target_otherwise_kept() -> None:
    """/api-explorer/api/... is rewritten to /api/...; the query is kept byte for byte."""
    route = TABLE.resolve("GET", "/api-explorer/api/v2/compute/vms?a=%2F&b")
    assert route.target == "/api/v2/compute/vms?a=%2F&b"
    assert TABLE.resolve("GET", "/api-explorer/index.html").target == "/api-explorer/index.html"


@pytest.mark.parametrize("target", [
    "/api/v2/../identity/users", "/api/v2/%2e%2e/x", "/api/./x", "/api/v2/.%2E/x",
    "http://evil.example/api/v2/compute/vms", "*",
])
def test_dot_segments_and_foreign_targets_are_refused(target: str) -> None:
    """Dot segments and absolute-form targets are refused, never resolved or followed."""
    with pytest.raises(BadRequest):
        TABLE.resolve("GET", target)


def test_dots_inside_names_are_fine() -> None:
    """Only whole '.'/'..' segments are refused, not names that contain dots."""
    assert TABLE.resolve("GET", "/api/v2/images/a..b/.hidden").target == \
        "/api/v2/images/a..b/.hidden"


@pytest.mark.parametrize("method", ["TRACE", "TRACK"])
def test_trace_is_refused(method: str) -> None:
    """TRACE would echo the injected token back to the client: 405, never forwarded."""
    with pytest.raises(BadRequest) as caught:
        TABLE.resolve(method, "/api/v2/compute/vms")
    assert caught.value.status == 405


def test_empty_project_header_means_the_default_and_empty_id_is_refused() -> None:
    """An empty X-Zcompute-Project falls back to the default; `id:` alone is refused."""
    assert str(TABLE.resolve("GET", "/api/v2/compute/vms", "").scope) == "project:dev"
    with pytest.raises(BadRequest):
        TABLE.resolve("GET", "/api/v2/compute/vms", "id:")
