"""In-memory virtual machines, two seeded per project."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from proxy.simulator.model import Directory, Project, stable_id
from proxy.simulator.tokens import iso_utc

SEED_NAMES = ("web-1", "db-1")


@dataclass(eq=False)
class Vm:
    """One VM; `project` is where it lives."""

    id: str
    name: str
    project: Project
    created_at: float
    status: str = "active"

    def to_json(self) -> dict[str, Any]:
        """The VM as the API returns it, with its project so callers see where it landed."""
        return {"id": self.id, "name": self.name, "status": self.status,
                "project_id": self.project.id,
                "project": {"id": self.project.id, "name": self.project.name},
                "created_at": iso_utc(self.created_at)}


class VmStore:
    """VMs of every project, seeded with `<project>-web-1` and `<project>-db-1`."""

    def __init__(self, directory: Directory, now: float) -> None:
        self._vms: dict[str, Vm] = {}
        for account in directory.accounts:
            for project in account.projects:
                for seed in SEED_NAMES:
                    vm_id = stable_id("vm", project.id, seed)
                    self._vms[vm_id] = Vm(vm_id, f"{project.name}-{seed}", project, now)

    def in_project(self, project: Project) -> list[Vm]:
        """The VMs of `project`, oldest first."""
        return [vm for vm in self._vms.values() if vm.project is project]

    def create(self, project: Project, name: str, now: float) -> Vm:
        """A new active VM in `project`."""
        vm = Vm(uuid.uuid4().hex, name, project, now)
        self._vms[vm.id] = vm
        return vm

    def get(self, project: Project, vm_id: str) -> Vm | None:
        """The VM with this id if it belongs to `project`."""
        vm = self._vms.get(vm_id)
        return vm if vm is not None and vm.project is project else None

    def delete(self, vm: Vm) -> None:
        """Remove a VM."""
        self._vms.pop(vm.id, None)
