"""Action timestamps: text in the queue, datetimes for botocore, the same instant either way."""

from __future__ import annotations

import datetime as dt

import pytest

pytest.importorskip("botocore")
from botocore.utils import parse_to_aware_datetime  # noqa: E402

from flamenco_deadline_worker.backends.deadline.timestamps import for_botocore, now_iso, parse_iso  # noqa: E402


def test_queued_text_of_this_and_earlier_versions_is_the_instant_botocore_reads() -> None:
    for text in (now_iso(), "2026-12-02T10:17:33.123456Z", "2026-12-02T10:17:33+00:00"):
        ours = parse_iso(text)
        assert ours.tzinfo is not None
        assert ours == parse_to_aware_datetime(text), text


def test_only_the_timestamps_of_an_update_become_datetimes() -> None:
    update = {"completedStatus": "SUCCEEDED", "processExitCode": 0, "startedAt": "2026-12-02T10:17:33.000001Z",
              "endedAt": now_iso(), "progressMessage": "2026-12-02T10:17:33Z"}
    converted = for_botocore(update)
    assert converted["startedAt"] == dt.datetime(2026, 12, 2, 10, 17, 33, 1, tzinfo=dt.timezone.utc)
    assert isinstance(converted["endedAt"], dt.datetime)
    assert converted["progressMessage"] == "2026-12-02T10:17:33Z"  # text stays text
    assert {k: v for k, v in converted.items() if not k.endswith("At")} == {
        "completedStatus": "SUCCEEDED", "processExitCode": 0, "progressMessage": "2026-12-02T10:17:33Z",
    }
