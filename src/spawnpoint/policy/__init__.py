"""Spawn policy: one input document per spawn, one decision, fail closed.

## The policy input document

The spawn service builds it with `SpawnPolicyInput(...).document()` and asks the engine for
`data.spawn.allow` (boolean; undefined means not allowed) and `data.spawn.deny` (a set of
reason strings shown to the caller). A spawn proceeds only when `allow` is `true` and `deny`
is empty. IDs are UUID strings; money and CPU are JSON numbers.

```json
{
  "action": "spawn",
  "tenant": {
    "id": "uuid", "name": "Acme", "slug": "acme", "status": "active",
    "plan": {
      "id": "uuid", "name": "team",
      "max_workspaces": 10, "max_cpu": 16.0, "max_memory_mb": 32768, "max_storage_gb": 200,
      "max_concurrent_jobs": 4, "max_jobs_per_day": 500, "monthly_budget": 1000.0
    }
  },
  "user": {"id": "uuid", "role": "member", "operator": false},
  "template": {
    "id": "uuid", "name": "jupyter", "version": 3, "provisioner": "local", "tenant_id": "uuid",
    "spec": {
      "command": "jupyter lab --port {port}", "image": null, "cpu": 2.0, "memory_mb": 4096,
      "storage_gb": 10, "ports": [8888], "env": {"MODE": "lab"}, "idle_timeout_minutes": 60,
      "max_lifetime_days": 7, "hourly_cost": 0.12, "restricted": false, "stages": {}
    }
  },
  "request": {
    "name": "analysis", "project_id": "uuid", "external_ref": null,
    "parameters": {}, "dry_run": false
  },
  "usage": {"workspaces": 3, "cpu": 6.0, "memory_mb": 12288, "storage_gb": 30},
  "budget": {
    "status": "warning", "period_start": "2026-12-01T05:00:00Z",
    "period_end": "2027-01-01T05:00:00Z", "time_zone": "America/New_York",
    "budgets": [
      {"id": "uuid", "scope": "project", "scope_id": "uuid", "limit": 500.0, "spent": 412.5,
       "ratio": 0.825, "warn_ratio": 0.8, "hard_ratio": 1.0, "state": "warning"}
    ]
  }
}
```

| field | type | meaning |
| --- | --- | --- |
| `action` | `"spawn"` | what is being decided |
| `tenant.id`, `.name`, `.slug` | string | the spawning tenant |
| `tenant.status` | `"active"` or `"suspended"` | anything but `active` is denied |
| `tenant.plan.id`, `.name` | string | the tenant's plan |
| `tenant.plan.max_*` | number | its limits (`max_cpu` in vCPUs) |
| `tenant.plan.monthly_budget` | number | in the plan's currency |
| `user.id` | string | the caller (user or agent) |
| `user.role` | string | `viewer`, `member`, `publisher`, `admin` or `operator` |
| `user.operator` | boolean | platform-operator rights |
| `template.id`, `.name` | string | the template |
| `template.version` | integer | the version being spawned |
| `template.provisioner` | string | that version's driver |
| `template.tenant_id` | string or null | owner tenant; null for platform templates |
| `template.spec` | object | that version's `TemplateSpec` (fields below) |
| `request.name` | string or null | requested workspace name |
| `request.project_id` | string or null | project the workspace belongs to |
| `request.external_ref` | string or null | caller's reference |
| `request.parameters` | object | free-form spawn parameters |
| `request.dry_run` | boolean | validate only, provision nothing |
| `usage.workspaces`, `.cpu` | number | live workspaces and their vCPUs |
| `usage.memory_mb`, `.storage_gb` | number | and their memory and storage |
| `budget.status` | `"ok"`, `"warning"` or `"exceeded"` | worst of `budgets`; `ok` if none |
| `budget.period_start`, `.period_end` | string (UTC) | this period: the calendar month |
| `budget.time_zone` | string | the tenant's IANA time zone (`UTC` by default) |
| `budget.budgets` | array | budgets in scope: the tenant's, the project's, the user's |
| `budget.budgets[].id`, `.scope_id` | string | the budget, what it limits |
| `budget.budgets[].scope` | string | `tenant`, `project` or `user` |
| `budget.budgets[].limit`, `.spent` | number | monthly limit, spent this period |
| `budget.budgets[].ratio` | number | spent / limit |
| `budget.budgets[].warn_ratio`, `.hard_ratio` | number | its thresholds |
| `budget.budgets[].state` | `"ok"`, `"warning"` or `"exceeded"` | `exceeded` is denied |

`usage` is what the tenant's live workspaces use **before** this spawn. `template.spec` has
the `TemplateSpec` fields: `command`, `image` (string or null), `cpu` (number), `memory_mb`,
`storage_gb` (integers), `ports` (array of integers), `env` (object of strings),
`idle_timeout_minutes`, `max_lifetime_days` (integer or null), `hourly_cost` (number),
`restricted` (boolean: only tenant admins may spawn it) and `stages` (object: each stage's
overrides).

The default policy (`default.rego`, package `spawn`) denies, each with a reason: an absent
input or a missing section; a restricted template unless the user is an `admin`/`operator` or
has operator rights; a tenant that is not `active`; each `exceeded` budget in scope (naming
its id, scope, limit and spending); and usage plus this
template above `max_workspaces`, `max_cpu`, `max_memory_mb` or `max_storage_gb`. Extra modules
add `deny contains ...` rules to the same package.
"""

from spawnpoint.policy.engine import (
    Decision,
    PolicyCompileError,
    PolicyEngine,
    PolicyUnavailable,
    build_policy_engine,
)
from spawnpoint.policy.input import (
    PolicyBudget,
    PolicyBudgetLimit,
    PolicyPlan,
    PolicyRequest,
    PolicyTemplate,
    PolicyTenant,
    PolicyUsage,
    PolicyUser,
    SpawnPolicyInput,
)

__all__ = [
    "Decision",
    "PolicyBudget",
    "PolicyBudgetLimit",
    "PolicyCompileError",
    "PolicyEngine",
    "PolicyPlan",
    "PolicyRequest",
    "PolicyTemplate",
    "PolicyTenant",
    "PolicyUnavailable",
    "PolicyUsage",
    "PolicyUser",
    "SpawnPolicyInput",
    "build_policy_engine",
]
