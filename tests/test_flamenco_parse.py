"""Task answers from a Manager that break the contract fail the task, not the worker."""

from __future__ import annotations

import pytest

from flamenco_deadline_worker.backends.flamenco import parse_task, retry_after_seconds
from flamenco_deadline_worker.core.model import FatalServiceError
from flamenco_deadline_worker.runner.commands.base import CommandError, find


def test_a_task_without_uuid_cannot_be_taken() -> None:
    with pytest.raises(FatalServiceError, match="no task uuid"):
        parse_task({"job": "j", "commands": []})
    with pytest.raises(FatalServiceError, match="no task uuid"):
        parse_task(["not", "an", "object"])


def test_bad_commands_become_a_failing_command_naming_the_problem() -> None:
    task = parse_task({"uuid": "t1", "commands": {"name": "echo"}, "steps_total": "many"})
    assert task.steps_total == 0
    assert task.job_id == "unknown-job"
    (command,) = task.commands
    with pytest.raises(CommandError, match=r"unknown command \"<task answer: 'commands' is dict, not a list>\""):
        find(command.name)


def test_a_command_that_is_not_an_object_is_kept_as_a_failing_command() -> None:
    task = parse_task({"uuid": "t1", "job": "j", "name": "n", "commands": [
        {"name": "echo", "parameters": {"message": "hi"}, "total_step_count": 1}, 42]})
    assert [c.name for c in task.commands] == ["echo", "<command 2 is not an object>"]
    assert task.commands[0].total_step_count == 1


@pytest.mark.parametrize(("header", "seconds"), [("3", 3.0), ("0.5", 0.5), ("soon", None), ("-4", 0.0)])
def test_retry_after(header: str, seconds: float | None) -> None:
    assert retry_after_seconds({"Retry-After": header}) == seconds
