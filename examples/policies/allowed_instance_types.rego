# Hard-mandatory in the README's example: no instance type outside the list, whoever applies.
package terraform.allowed_instance_types

allowed := {"t3.micro", "t3.small", "t3.medium"}

deny contains msg if {
	some rc in input.plan.resource_changes
	rc.type == "aws_instance"
	some action in rc.change.actions
	action in {"create", "update"}
	not rc.change.after.instance_type in allowed
	msg := sprintf("%s: instance type %s is not allowed (t3.micro, t3.small, t3.medium are)", [rc.address, rc.change.after.instance_type])
}

# The run's context is part of the input: a plan queued outside the `prod-` workspaces is
# only warned about when it is large.
warn contains msg if {
	not startswith(input.workspace.name, "prod-")
	count(input.plan.resource_changes) > 50
	msg := sprintf("%d resource changes in workspace %s", [count(input.plan.resource_changes), input.workspace.name])
}
