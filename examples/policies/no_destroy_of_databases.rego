# Soft-mandatory in the README's example: deleting a database needs a second person (an
# admin of the workspace overrides the failed check, with a reason, audited).
package terraform.no_destroy_of_databases

database_types := {"aws_db_instance", "aws_rds_cluster", "google_sql_database_instance", "azurerm_mssql_database"}

deny contains msg if {
	some rc in input.plan.resource_changes
	rc.type in database_types
	"delete" in rc.change.actions
	msg := sprintf("%s would be destroyed: a database is deleted only with an admin override", [rc.address])
}

warn contains msg if {
	some rc in input.plan.resource_changes
	rc.type in database_types
	rc.change.actions == ["update"]
	msg := sprintf("%s is changed in place: check the maintenance window", [rc.address])
}
