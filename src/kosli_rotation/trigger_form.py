"""The rotation DAG's manual trigger form: what a person may ask of a run, never with what key."""

from __future__ import annotations

from airflow.sdk import Param

from kosli_rotation.inventory import KeyEntry


def trigger_form(entry: KeyEntry) -> dict[str, Param]:
    """The manual trigger form. It holds no secret: runs are told why and how, never with what key."""
    form = {
        "reason": Param(
            None,
            type=["null", "string"],
            maxLength=500,
            title="Reason",
            description="Why rotate now (incident, offboarding, ...). Required for manual runs; "
            "recorded in the audit entry.",
        ),
        "strategy": Param(
            "replace",
            enum=["replace", "rotate"],
            title="Strategy",
            values_display={
                "replace": "replace: new key, old key revoked as soon as every consumer has the new one",
                "rotate": "rotate: Kosli rotate, old key dies when the grace period ends",
            },
            description=f"Manual runs only. Scheduled runs use the inventory's strategy ({entry.strategy}).",
        ),
        "grace_hours": Param(
            entry.grace_hours,
            type="integer",
            minimum=1,
            maximum=720,
            title="Grace period (hours)",
            description="How long Kosli keeps the old key alive after a 'rotate' (1 to 720).",
        ),
        "force": Param(
            False,
            type="boolean",
            title="Force",
            description="Rotate even though this key was rotated less than an hour ago. Nothing else.",
        ),
        "revoke_despite_recent_use": Param(
            False,
            type="boolean",
            title="Revoke despite recent use",
            description="'replace' only: revoke the old key although Kosli saw it used after every listed consumer "
            "had the new key (something unlisted may break). Use it once you have found and fixed that user.",
        ),
        "resume_after_attention": Param(
            False,
            type="boolean",
            title="Resume after attention",
            description="Manual runs only: resume a rotation that failed max_failed_attempts runs and waits for a "
            "person (needs attention). Fix the cause first; the run continues from where the rotation stopped.",
        ),
        "dry_run": Param(
            False,
            type="boolean",
            title="Dry run",
            description="Check everything and print the plan, change nothing.",
        ),
    }
    if entry.consumers:
        names = entry.consumer_names
        form["consumers"] = Param(
            names,
            type="array",
            items={"type": "string", "enum": names},
            uniqueItems=True,
            minItems=1,
            examples=names,
            title="Consumers to update",
            description="Manual runs only; default all. Consumers left out are not written to, but the old key is "
            "still revoked only once every consumer is verified with the new key: leave one out when something "
            "else updates it, or to finish the others first.",
        )
    return form
