# The default spawn policy shipped with spawnpoint.
#
# For every spawn the service evaluates `data.spawn.allow` and `data.spawn.deny`
# against the input document described in `spawnpoint.policy` (action, tenant
# with plan, user, template version, request, usage, budget). The spawn goes
# ahead only when `allow` is true and `deny` is empty; each string in `deny` is
# shown to the caller as a reason.
#
# Extra modules may add rules to this package: a new `deny contains ...` rule
# is all it takes to refuse more spawns, and `allow` follows from it.
#
# Written for rego-cpp (the embedded engine) and OPA alike. Two rego-cpp
# quirks shape the style: format strings with %s (rego-cpp's %v quotes
# strings), and do not pass string literals to functions that format them.
package spawn

import rego.v1

default allow := false

allow if count(deny) == 0

# Fail closed on an absent or incomplete input document rather than skip the
# rules that would have read the missing parts.
deny contains "the policy input is not an object" if not is_object(input)

required_sections := {"tenant", "user", "template", "request", "usage", "budget"}

deny contains sprintf("the policy input has no %s section", [section]) if {
	some section in required_sections - object.keys(input)
}

# Restricted templates: only tenant admins and platform operators may spawn them.
deny contains sprintf("template %s is restricted to tenant admins", [input.template.name]) if {
	input.template.spec.restricted == true
	not privileged
}

privileged if input.user.role in {"admin", "operator"}

privileged if input.user.operator == true

# A suspended tenant (or any status but active) spawns nothing.
deny contains sprintf("tenant %s is %s", [input.tenant.slug, input.tenant.status]) if {
	input.tenant.status != "active"
}

# Budgets: no new spending in a scope whose budget is used up this period
# (the tenant's, the project's or the user's), each named with its numbers.
deny contains sprintf(
	"budget %s (%s %s) is exceeded: %v spent of its monthly limit of %v",
	[budget.id, budget.scope, budget.scope_id, budget.spent, budget.limit],
) if {
	some budget in input.budget.budgets
	budget.state == "exceeded"
}

# A document that says exceeded without naming the budget is denied all the same.
deny contains "the budget is exceeded" if {
	input.budget.status == "exceeded"
	not exceeded_named
}

exceeded_named if {
	some budget in input.budget.budgets
	budget.state == "exceeded"
}

# Quotas: the tenant's live workspaces plus this one must fit every plan
# limit. The spawn service enforces the same limits under a lock; these rules
# put the reason in front of the caller and give custom rules the same facts.
deny contains sprintf(
	"quota max_workspaces exceeded: %v in use + 1 requested > %v allowed by plan %s",
	[input.usage.workspaces, input.tenant.plan.max_workspaces, input.tenant.plan.name],
) if {
	input.usage.workspaces + 1 > input.tenant.plan.max_workspaces
}

deny contains sprintf(
	"quota max_cpu exceeded: %v in use + %v requested > %v allowed by plan %s",
	[input.usage.cpu, input.template.spec.cpu, input.tenant.plan.max_cpu, input.tenant.plan.name],
) if {
	input.usage.cpu + input.template.spec.cpu > input.tenant.plan.max_cpu
}

deny contains sprintf(
	"quota max_memory_mb exceeded: %v in use + %v requested > %v allowed by plan %s",
	[
		input.usage.memory_mb, input.template.spec.memory_mb,
		input.tenant.plan.max_memory_mb, input.tenant.plan.name,
	],
) if {
	input.usage.memory_mb + input.template.spec.memory_mb > input.tenant.plan.max_memory_mb
}

deny contains sprintf(
	"quota max_storage_gb exceeded: %v in use + %v requested > %v allowed by plan %s",
	[
		input.usage.storage_gb, input.template.spec.storage_gb,
		input.tenant.plan.max_storage_gb, input.tenant.plan.name,
	],
) if {
	input.usage.storage_gb + input.template.spec.storage_gb > input.tenant.plan.max_storage_gb
}
