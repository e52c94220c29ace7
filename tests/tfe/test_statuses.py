"""The status mapping, ours -> TFE and back (docs/architecture.md has the table): pure."""

from __future__ import annotations

from pathlib import Path

from tasks_app.states import RunStatus
from tasks_app.tfe.statuses import (
    RUN_STATUS,
    RUN_STATUS_BACK,
    TfePhaseStatus,
    TfeRunStatus,
    apply_status,
    phase_done,
    plan_status,
    run_actions,
    tfe_run_status,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"


def test_it_maps_every_status_of_ours():
    assert set(RUN_STATUS) == set(RunStatus)
    assert tfe_run_status("apply_pending") == "planned"
    assert tfe_run_status("planned") == tfe_run_status("planned_no_changes") == "planned_and_finished"
    assert tfe_run_status("apply_queued") == "confirmed"
    assert tfe_run_status("cancelled") == "canceled"


def test_it_maps_back_to_exactly_the_statuses_that_map_forward():
    for tfe, ours in RUN_STATUS_BACK.items():
        assert all(RUN_STATUS[s] == tfe for s in ours)
    assert RUN_STATUS_BACK[TfeRunStatus.PLANNED_AND_FINISHED] == {RunStatus.PLANNED, RunStatus.PLANNED_NO_CHANGES}
    assert RUN_STATUS_BACK[TfeRunStatus.PLANNED] == {RunStatus.APPLY_PENDING}
    assert set().union(*RUN_STATUS_BACK.values()) == set(RunStatus)


def test_it_documents_the_table_as_the_code_has_it():
    text = DOC.read_text()
    for ours, tfe in RUN_STATUS.items():
        assert f"| `{ours}` | `{tfe}` |" in text, f"docs/architecture.md lacks the row {ours} -> {tfe}"


def test_it_offers_confirm_and_discard_only_while_a_run_waits_for_them():
    assert run_actions("apply_pending") == {"is-cancelable": False, "is-confirmable": True, "is-discardable": True,
                                             "is-force-cancelable": False}
    assert run_actions("planning")["is-cancelable"] and not run_actions("planning")["is-confirmable"]
    assert not any(run_actions("applied").values())


def test_it_tells_the_log_reader_when_each_phase_is_over():
    assert plan_status("planning", plan_done=False) == TfePhaseStatus.RUNNING
    assert plan_status("apply_pending", plan_done=True) == TfePhaseStatus.FINISHED
    assert plan_status("cancelled", plan_done=False) == TfePhaseStatus.CANCELED
    assert plan_status("errored", plan_done=False) == TfePhaseStatus.ERRORED
    assert apply_status("apply_pending", confirmed=False) == TfePhaseStatus.PENDING
    assert apply_status("applying", confirmed=True) == TfePhaseStatus.RUNNING
    assert apply_status("discarded", confirmed=False) == TfePhaseStatus.UNREACHABLE
    assert apply_status("planned", confirmed=False) == TfePhaseStatus.UNREACHABLE
    assert apply_status("errored", confirmed=True) == TfePhaseStatus.ERRORED
    assert not phase_done(apply_status("apply_queued", confirmed=True))
    assert phase_done(plan_status("planned_no_changes", plan_done=True))
