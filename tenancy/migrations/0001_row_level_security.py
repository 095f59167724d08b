"""Row-level security on every tenant table (PostgreSQL; nothing on SQLite).

A row belongs to the owner of its agent: directly (agents_agent.owner_id, and live
events, which name their owner), through agent_id, or through the parent row it hangs
off (an integration's CRM events, a conversation's messages, a run's steps, a firing's
actions), being visible exactly when that row is. Each policy allows a row in system context or when its owner is
``tenancy_user_id()``, for reading and for writing; a row written must also point only
at the user's own rows through its other foreign keys (``refs``). A self-reference (a
message's reply_to) is left out: a policy may not read its own table.
"""
from django.db import migrations

from tenancy.operations import CreateAppRole, CreateScopeFunctions, TenantTable

USER_AGENTS = "SELECT a.id FROM agents_agent a WHERE a.owner_id = tenancy_user_id()"


def through_agent(column: str = "agent_id") -> str:
    # the user's few agents, found through the index on owner_id
    return f"{column} IN ({USER_AGENTS})"


def through_parent(table: str, column: str, parent: str) -> str:
    # visible when the parent row is, by the parent's own policy: one lookup of the row's
    # own parent (cheaper to plan and to run than spelling the parent's rule out again)
    return f"EXISTS (SELECT 1 FROM {parent} p WHERE p.id = {table}.{column})"


def through_integration(table: str) -> str:
    return through_parent(table, "integration_id", "integrations_integration")


class Migration(migrations.Migration):
    dependencies = [
        ("agents", "0007_meetings"),
        ("crm", "0004_outgoing_message_kind"),
        ("integrations", "0006_schedule_rotate_oauth_tokens"),
        ("observability", "0002_schedule_compact_metrics"),
        ("sequences", "0004_step_queued_index"),
        ("triggers", "0003_schedule_forget_own_changes"),
    ]

    operations = [
        CreateScopeFunctions(),
        CreateAppRole(),
        # owned by a user
        TenantTable("agents_agent", "owner_id = tenancy_user_id()"),
        TenantTable("agents_liveevent", "owner_id = tenancy_user_id()"),
        # an agent's
        TenantTable("agents_agentcrmaccess", through_agent()),
        TenantTable("agents_executionlog", through_agent()),
        TenantTable("agents_conversation", through_agent(), refs=[("integration_id", "integrations_integration")]),
        TenantTable("agents_meeting", through_agent(), refs=[("calendar_id", "integrations_integration")]),
        TenantTable("integrations_integration", through_agent()),
        TenantTable("triggers_trigger", through_agent()),
        TenantTable(
            "triggers_triggerfiring",
            through_agent(),
            refs=[("trigger_id", "triggers_trigger"), ("event_id", "crm_crmevent"), ("log_id", "agents_executionlog")],
        ),
        TenantTable("sequences_sequence", through_agent()),
        TenantTable(
            "sequences_sequencerun",
            through_agent(),
            refs=[("sequence_id", "sequences_sequence"), ("integration_id", "integrations_integration")],
        ),
        # the agent label of a metric; rows without one (totals) are the system's
        TenantTable("observability_metricbucket", through_agent()),
        # an integration's
        TenantTable("crm_crmevent", through_integration("crm_crmevent")),
        TenantTable("crm_crmsnapshot", through_integration("crm_crmsnapshot")),
        TenantTable("triggers_entitystate", through_integration("triggers_entitystate")),
        TenantTable("triggers_ownchange", through_integration("triggers_ownchange"), refs=[("trigger_id", "triggers_trigger")]),
        # part of a parent row
        TenantTable(
            "agents_conversationmessage",
            through_parent("agents_conversationmessage", "conversation_id", "agents_conversation"),
        ),
        TenantTable("sequences_sequencestep", through_parent("sequences_sequencestep", "run_id", "sequences_sequencerun")),
        TenantTable("triggers_actionrun", through_parent("triggers_actionrun", "firing_id", "triggers_triggerfiring")),
    ]
