"""zCompute resource endpoints: VMs (project scope) and identity listings (account scope)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from proxy.simulator.errors import SimError
from proxy.simulator.identity import AUTH_PATHS
from proxy.simulator.model import Project
from proxy.simulator.state import SIM_STATE
from proxy.simulator.tokens import Token

VM_PREFIXES = ("/api/v2/compute/vms", "/api/v2/vms")
SCOPE_HEADER = "X-Simulator-Scope"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def add_routes(router: web.UrlDispatcher) -> None:
    """The resource routes, then a JSON 404 for anything else under /api/."""
    for prefix in VM_PREFIXES:
        router.add_get(prefix, list_vms)
        router.add_post(prefix, create_vm)
        router.add_get(prefix + "/{vm_id}", get_vm)
        router.add_delete(prefix + "/{vm_id}", delete_vm)
    router.add_get("/api/v2/identity/projects", list_projects)
    router.add_get("/api/v2/identity/users", list_users)
    router.add_get("/api/v2/identity/users/myself/projects", my_projects)
    router.add_route("*", "/api/{tail:.*}", not_found)


@web.middleware
async def count_resources(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count every /api/ request outside the token API by status (errors included)."""
    if not request.path.startswith("/api/") or request.path in AUTH_PATHS:
        return await handler(request)
    stats = request.app[SIM_STATE].stats
    token = request.headers.get("X-Auth-Token")
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        stats.resource(exc.status, token)
        raise
    stats.resource(response.status, token)
    return response


def _valid_token(request: web.Request) -> Token:
    """The request's valid X-Auth-Token, else 401."""
    state = request.app[SIM_STATE]
    token = state.tokens.get(request.headers.get("X-Auth-Token"), state.now())
    if token is None:
        raise SimError(401)
    return token


def _project_token(request: web.Request) -> tuple[Token, Project]:
    """A valid project-scoped token and its project; 403 for an account token."""
    token = _valid_token(request)
    if token.project is None:
        raise SimError(403, "This request needs a project-scoped token; "
                            f"the token is scoped to account {token.account.name}.")
    return token, token.project


def _account_token(request: web.Request) -> Token:
    """A valid account (domain) scoped token; 403 for a project token."""
    token = _valid_token(request)
    if token.project is not None:
        raise SimError(403, "This request needs an account (domain) scoped token; "
                            f"the token is scoped to project {token.project.name}.")
    return token


def _json(token: Token, body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status, headers={SCOPE_HEADER: token.scope_label})


async def list_vms(request: web.Request) -> web.StreamResponse:
    """GET the VMs of the token's project."""
    token, project = _project_token(request)
    vms = request.app[SIM_STATE].vms.in_project(project)
    return _json(token, [vm.to_json() for vm in vms])


async def create_vm(request: web.Request) -> web.StreamResponse:
    """POST {"name": ...}: 201 with the new VM."""
    token, project = _project_token(request)
    try:
        body = await request.json()
    except ValueError:
        body = None
    name = body.get("name") if isinstance(body, dict) else None
    if not isinstance(name, str) or not name:
        raise SimError(400, "Expecting a JSON body with a non-empty 'name'.")
    state = request.app[SIM_STATE]
    vm = state.vms.create(project, name, state.now())
    return _json(token, vm.to_json(), status=201)


async def get_vm(request: web.Request) -> web.StreamResponse:
    """GET one VM of the token's project (404 if it lives elsewhere)."""
    token, project = _project_token(request)
    vm = request.app[SIM_STATE].vms.get(project, request.match_info["vm_id"])
    if vm is None:
        raise SimError(404, "VM not found in this project.")
    return _json(token, vm.to_json())


async def delete_vm(request: web.Request) -> web.StreamResponse:
    """DELETE one VM of the token's project: 204."""
    token, project = _project_token(request)
    state = request.app[SIM_STATE]
    vm = state.vms.get(project, request.match_info["vm_id"])
    if vm is None:
        raise SimError(404, "VM not found in this project.")
    state.vms.delete(vm)
    return web.Response(status=204, headers={SCOPE_HEADER: token.scope_label})


async def list_projects(request: web.Request) -> web.StreamResponse:
    """GET the projects of the token's account."""
    token = _account_token(request)
    return _json(token, {"projects": [_project_json(p) for p in token.account.projects]})


async def list_users(request: web.Request) -> web.StreamResponse:
    """GET the users of the token's account."""
    token = _account_token(request)
    users = [{"id": u.id, "name": u.name, "domain_id": u.account.id, "enabled": True}
             for u in token.account.users]
    return _json(token, {"users": users})


async def my_projects(request: web.Request) -> web.StreamResponse:
    """GET the projects the token's user has a role on."""
    token = _account_token(request)
    mine = [p for p in token.account.projects if p.id in token.user.project_ids]
    return _json(token, {"projects": [_project_json(p) for p in mine]})


def _project_json(project: Project) -> dict[str, Any]:
    return {"id": project.id, "name": project.name, "domain_id": project.account.id,
            "description": "", "enabled": True, "is_domain": False}


async def not_found(request: web.Request) -> web.StreamResponse:
    """Any other /api/ path."""
    raise SimError(404, f"The resource could not be found: {request.path}")
