"""Workflow code changes must replay the histories that earlier code recorded.

Each file under tests/histories is the full history of a workflow run made by
an earlier release. If a change to a workflow breaks determinism for runs
already in flight, replaying these fails; guard such a change with
`workflow.patched()` instead.

Recording: `NURTURE_RECORD_HISTORIES=1 make test PYTEST_ARGS=tests/test_end_to_end.py`
writes the histories of the end-to-end test's workflows here (and of the
tests that call `record_history`). Files named `v1-*` come from the first
release, which ran campaigns as a plain list of sends. The others come from
the journey interpreter; `nurture-send-failed-exit` and
`nurture-opted-out-while-waiting` from the release with a send queue per
channel and consent checked at delivery.
"""

import json
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from nurture.codec import data_converter
from tests.conftest import PAYLOAD_ENCRYPTION_KEYS
from workflows.lead import LeadWorkflow
from workflows.nurture import NurtureWorkflow

HISTORIES = Path(__file__).resolve().parent / "histories"
FILES = sorted(HISTORIES.glob("*.json"))


def test_histories_were_recorded() -> None:
    workflow_types = {json.loads(path.read_text())["workflow_type"] for path in FILES}
    assert {"LeadWorkflow", "NurtureWorkflow"} <= workflow_types


@pytest.mark.parametrize("path", FILES, ids=[path.stem for path in FILES])
async def test_history_replays_on_current_code(path: Path) -> None:
    recorded = json.loads(path.read_text())
    history = WorkflowHistory.from_json(recorded["workflow_id"], recorded["history"])
    # Files recorded before encryption pass through the codec unchanged; files
    # recorded since are encrypted with the test key.
    replayer = Replayer(
        workflows=[LeadWorkflow, NurtureWorkflow],
        data_converter=data_converter(PAYLOAD_ENCRYPTION_KEYS),
    )

    await replayer.replay_workflow(history)
