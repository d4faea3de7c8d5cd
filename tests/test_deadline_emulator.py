"""The Deadline emulator, driven by real boto3 clients."""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

boto3 = pytest.importorskip("boto3")
from botocore.config import Config  # noqa: E402
from botocore.exceptions import ClientError  # noqa: E402

from flamenco_deadline_worker.testing.deadline_emulator import (  # noqa: E402
    DeadlineEmulator,
    Faults,
    Options,
    ServiceError,
    make_job,
    simple_template,
)


@pytest.fixture
def emu() -> Iterator[DeadlineEmulator]:
    job = make_job(simple_template(3, step_environment=True, job_environment=True))
    with DeadlineEmulator(job, Options(tasks_ahead=1)) as emulator:
        yield emulator


def clients(emu: DeadlineEmulator, validate: bool = True, **keys: str) -> tuple[Any, Any]:
    env = emu.client_env()
    session = boto3.Session(
        aws_access_key_id=keys.get("access", env["AWS_ACCESS_KEY_ID"]),
        aws_secret_access_key=keys.get("secret", env["AWS_SECRET_ACCESS_KEY"]),
        aws_session_token=keys.get("token"),
        region_name="us-west-2",
    )
    config = Config(inject_host_prefix=False, retries={"total_max_attempts": 1}, parameter_validation=validate)
    return (
        session.client("deadline", endpoint_url=emu.url, config=config),
        session.client("logs", endpoint_url=emu.url, config=config),
    )


def start_worker(emu: DeadlineEmulator) -> tuple[Any, Any, dict[str, str]]:
    deadline, _ = clients(emu)
    ids = {"farmId": emu.state.options.farm_id, "fleetId": emu.state.options.fleet_id}
    worker_id = deadline.create_worker(**ids, hostProperties={"hostName": "h1"})["workerId"]
    ids["workerId"] = worker_id
    creds = deadline.assume_fleet_role_for_worker(**ids)["credentials"]
    assert creds["expiration"] > dt.datetime.now(dt.timezone.utc)
    deadline, logs = clients(
        emu, access=creds["accessKeyId"], secret=creds["secretAccessKey"], token=creds["sessionToken"]
    )
    deadline.update_worker(**ids, status="STARTED")
    return deadline, logs, ids


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def test_a_whole_session_in_order(emu: DeadlineEmulator) -> None:
    emu.state.options.log_stream_calls_per_second = 1000
    deadline, logs, ids = start_worker(emu)
    kinds: list[str] = []
    updates: dict[str, Any] = {}
    session_id = ""
    for _ in range(40):
        answer = deadline.update_worker_schedule(**ids, updatedSessionActions=updates)
        updates = {}
        if not answer["assignedSessions"]:
            break
        session_id, session = next(iter(answer["assignedSessions"].items()))
        action = session["sessionActions"][0]
        kind = next(iter(action["definition"]))
        kinds.append(kind)
        if kind in ("envEnter", "envExit"):
            env_id = action["definition"][kind]["environmentId"]
            got = deadline.batch_get_job_entity(
                **ids, identifiers=[{"environmentDetails": {"jobId": session["jobId"], "environmentId": env_id}}]
            )
            assert got["entities"][0]["environmentDetails"]["template"]["name"] in env_id
        t = now()
        updates = {
            action["sessionActionId"]: {
                "completedStatus": "SUCCEEDED",
                "startedAt": t,
                "endedAt": t,
                "processExitCode": 0,
            }
        }
        group = session["logConfiguration"]["options"]["logGroupName"]
        stream = session["logConfiguration"]["options"]["logStreamName"]
        logs.put_log_events(
            logGroupName=group,
            logStreamName=stream,
            logEvents=[{"timestamp": int(t.timestamp() * 1000), "message": kind}],
        )
    assert kinds == ["envEnter", "envEnter", "taskRun", "taskRun", "taskRun", "envExit", "envExit"]
    assert set(emu.state.task_statuses().values()) == {"SUCCEEDED"}
    assert emu.state.log_text(emu.state.job.log_group, session_id).splitlines() == kinds
    assert emu.state.violations == []


def test_details_carry_the_openjd_templates(emu: DeadlineEmulator) -> None:
    deadline, _, ids = start_worker(emu)
    answer = deadline.update_worker_schedule(**ids)
    session = next(iter(answer["assignedSessions"].values()))
    task_run = next(a["definition"]["taskRun"] for a in session["sessionActions"] if "taskRun" in a["definition"])
    assert task_run["parameters"] == {"N": {"int": "1"}}
    got = deadline.batch_get_job_entity(
        **ids,
        identifiers=[
            {"jobDetails": {"jobId": session["jobId"]}},
            {"stepDetails": {"jobId": session["jobId"], "stepId": task_run["stepId"]}},
            {"jobAttachmentDetails": {"jobId": session["jobId"]}},
        ],
    )
    job, step = got["entities"][0]["jobDetails"], got["entities"][1]["stepDetails"]
    assert job["schemaVersion"] == "jobtemplate-2023-09" and job["logGroupName"].startswith("/aws/deadline/")
    assert step["template"]["script"]["actions"]["onRun"]["command"] == "echo"
    assert got["errors"][0]["jobAttachmentDetails"]["code"] == "ResourceNotFoundException"


def test_requests_are_checked_against_the_model(emu: DeadlineEmulator) -> None:
    _, _, ids = start_worker(emu)
    creds = emu.state.workers[ids["workerId"]].fleet_key
    # Clients with parameter validation off let bad requests reach the wire.
    deadline, logs = clients(emu, validate=False, access=creds)
    with pytest.raises(ClientError) as info:
        deadline.update_worker_schedule(**ids, updatedSessionActions={"sessionaction-x": {"completedStatus": "DONE"}})
    assert info.value.response["Error"]["Code"] == "ValidationException"
    assert "not one of" in info.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as info:
        logs.put_log_events(logGroupName="g", logStreamName="s", logEvents=[])
    assert info.value.response["Error"]["Code"] == "InvalidParameterException"


def test_faults_throttling_500_and_conflicts(emu: DeadlineEmulator) -> None:
    deadline, _ = clients(emu)
    ids = {"farmId": emu.state.options.farm_id, "fleetId": emu.state.options.fleet_id}
    emu.faults.scripted.append(("CreateWorker", ServiceError("ThrottlingException", "slow down", retry_after=2)))
    emu.faults.scripted.append(("CreateWorker", ServiceError("InternalServerException", "oops")))
    emu.state.options.fleet_create_in_progress_calls = 1
    with pytest.raises(ClientError) as info:
        deadline.create_worker(**ids)
    assert info.value.response["Error"]["Code"] == "ThrottlingException"
    assert info.value.response["ResponseMetadata"]["HTTPHeaders"]["retry-after"] == "2"
    assert info.value.response["retryAfterSeconds"] == 2
    with pytest.raises(ClientError) as info:
        deadline.create_worker(**ids)
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert info.value.response["Error"]["Code"] == "InternalServerException"
    with pytest.raises(ClientError) as info:
        deadline.create_worker(**ids)
    assert info.value.response["reason"] == "STATUS_CONFLICT"
    assert info.value.response["context"] == {"status": "CREATE_IN_PROGRESS"}
    assert info.value.response["resourceId"] == ids["fleetId"]
    worker_id = deadline.create_worker(**ids)["workerId"]
    assert worker_id.startswith("worker-")


def test_random_faults_hit_the_expected_share() -> None:
    job = make_job(simple_template(1))
    with DeadlineEmulator(job, faults=Faults(throttle_rate=0.2, error_rate=0.1, seed=7)) as emu:
        deadline, _ = clients(emu)
        ids = {"farmId": emu.state.options.farm_id, "fleetId": emu.state.options.fleet_id}
        failures = 0
        for _ in range(200):
            try:
                deadline.create_worker(**ids)
            except ClientError as exc:
                assert exc.response["Error"]["Code"] in ("ThrottlingException", "InternalServerException")
                failures += 1
        assert 40 <= failures <= 80


def test_cancel_lists_the_action_until_reported(emu: DeadlineEmulator) -> None:
    deadline, _, ids = start_worker(emu)
    answer = deadline.update_worker_schedule(**ids)
    session_id, session = next(iter(answer["assignedSessions"].items()))
    actions = [a["sessionActionId"] for a in session["sessionActions"]]
    t = now()
    done = {a: {"completedStatus": "SUCCEEDED", "startedAt": t, "endedAt": t} for a in actions[:2]}
    answer = deadline.update_worker_schedule(**ids, updatedSessionActions=done)
    running = answer["assignedSessions"][session_id]["sessionActions"][0]["sessionActionId"]
    answer = deadline.update_worker_schedule(**ids, updatedSessionActions={running: {"startedAt": t}})
    emu.state.cancel(running)
    answer = deadline.update_worker_schedule(**ids)
    canceled = answer["cancelSessionActions"][session_id]
    assert canceled[0] == running
    listed = [a["sessionActionId"] for a in answer["assignedSessions"][session_id]["sessionActions"]]
    assert running in listed
    report = {running: {"completedStatus": "CANCELED", "startedAt": t, "endedAt": now()}}
    report.update({a: {"completedStatus": "NEVER_ATTEMPTED"} for a in canceled[1:]})
    answer = deadline.update_worker_schedule(**ids, updatedSessionActions=report)
    left = [next(iter(a["definition"])) for a in answer["assignedSessions"][session_id]["sessionActions"]]
    assert left == ["envExit", "envExit"]
    assert answer["cancelSessionActions"] == {}
    assert emu.state.violations == []


def test_protocol_breaches_are_recorded(emu: DeadlineEmulator) -> None:
    deadline, _, ids = start_worker(emu)
    answer = deadline.update_worker_schedule(**ids)
    session = next(iter(answer["assignedSessions"].values()))
    actions = [a["sessionActionId"] for a in session["sessionActions"]]
    t = now()
    deadline.update_worker_schedule(
        **ids,
        updatedSessionActions={
            actions[1]: {"completedStatus": "SUCCEEDED", "startedAt": t, "endedAt": t},
            actions[2]: {"completedStatus": "NEVER_ATTEMPTED", "startedAt": t},
        },
    )
    assert any("while earlier" in v for v in emu.state.violations)
    assert any("NEVER_ATTEMPTED with startedAt" in v for v in emu.state.violations)
    bootstrap, _ = clients(emu)
    bootstrap.update_worker_schedule(**ids)
    assert any("not the worker's fleet role" in v for v in emu.state.violations)


def test_worker_status_conflicts_and_stop(emu: DeadlineEmulator) -> None:
    deadline, _, ids = start_worker(emu)
    deadline.update_worker(**ids, status="STOPPING")
    with pytest.raises(ClientError) as info:
        deadline.update_worker(**ids, status="STARTED")
    assert info.value.response["context"] == {"status": "STOPPING"}
    deadline.update_worker(**ids, status="STOPPED")
    with pytest.raises(ClientError) as info:
        deadline.update_worker_schedule(**ids)
    assert info.value.response["reason"] == "STATUS_CONFLICT"
    deadline.update_worker(**ids, status="STARTED")
    emu.state.request_stop(ids["workerId"])
    assert deadline.update_worker_schedule(**ids)["desiredWorkerStatus"] == "STOPPED"
    deadline.update_worker(**ids, status="STOPPED")
    deadline.delete_worker(**ids)
    with pytest.raises(ClientError) as info:
        deadline.update_worker(**ids, status="STARTED")
    assert info.value.response["Error"]["Code"] == "ResourceNotFoundException"


def test_outage_and_return(emu: DeadlineEmulator) -> None:
    deadline, _, ids = start_worker(emu)
    emu.go_down()
    with pytest.raises(Exception) as info:
        deadline.update_worker_schedule(**ids)
    assert "Connect" in type(info.value).__name__ or "connect" in str(info.value).lower()
    emu.come_back()
    assert "assignedSessions" in deadline.update_worker_schedule(**ids)


def test_environment_variables_reach_boto3(emu: DeadlineEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in emu.client_env().items():
        monkeypatch.setenv(name, value)
    client = boto3.client("deadline")
    ids = {"farmId": emu.state.options.farm_id, "fleetId": emu.state.options.fleet_id}
    assert client.create_worker(**ids)["workerId"].startswith("worker-")
    assert os.environ["AWS_DISABLE_HOST_PREFIX_INJECTION"] == "true"
    logs = boto3.client("logs")
    with pytest.raises(ClientError) as info:
        logs.put_log_events(logGroupName="nope", logStreamName="x", logEvents=[{"timestamp": 1, "message": "m"}])
    assert info.value.response["Error"]["Code"] == "ResourceNotFoundException"


def first_session(deadline: Any, ids: dict[str, str]) -> tuple[str, list[str]]:
    answer = deadline.update_worker_schedule(**ids)
    session_id, session = next(iter(answer["assignedSessions"].items()))
    return session_id, [a["sessionActionId"] for a in session["sessionActions"]]


def succeeded() -> dict[str, Any]:
    t = now()
    return {"completedStatus": "SUCCEEDED", "startedAt": t, "endedAt": t, "processExitCode": 0}


def test_progress_after_an_accepted_completion_is_flagged(emu: DeadlineEmulator) -> None:
    deadline, _, ids = start_worker(emu)
    _, actions = first_session(deadline, ids)
    deadline.update_worker_schedule(**ids, updatedSessionActions={actions[0]: succeeded()})
    assert emu.state.violations == []
    deadline.update_worker_schedule(**ids, updatedSessionActions={actions[0]: {"progressPercent": 100.0}})
    assert emu.state.violations == [f"{actions[0]}: progress sent after its SUCCEEDED was accepted"]


def test_a_second_completion_after_a_delivered_answer_is_flagged(emu: DeadlineEmulator) -> None:
    deadline, _, ids = start_worker(emu)
    _, actions = first_session(deadline, ids)
    done = {actions[0]: succeeded()}
    deadline.update_worker_schedule(**ids, updatedSessionActions=done)
    deadline.update_worker_schedule(**ids, updatedSessionActions=done)  # identical, but the first was answered
    assert emu.state.violations == [f"{actions[0]}: SUCCEEDED sent after its SUCCEEDED was accepted"]


def test_never_attempted_twice_in_two_answered_calls_is_flagged(emu: DeadlineEmulator) -> None:
    deadline, _, ids = start_worker(emu)
    _, actions = first_session(deadline, ids)
    # The worker stops: the first action is interrupted, the rest never attempted, in order.
    drain = {actions[0]: {"completedStatus": "INTERRUPTED", "startedAt": now(), "endedAt": now()}}
    drain.update({a: {"completedStatus": "NEVER_ATTEMPTED"} for a in actions[1:]})
    deadline.update_worker_schedule(**ids, updatedSessionActions=drain)
    assert emu.state.violations == []
    deadline.update_worker_schedule(**ids, updatedSessionActions={actions[1]: {"completedStatus": "NEVER_ATTEMPTED"}})
    assert emu.state.violations == [f"{actions[1]}: NEVER_ATTEMPTED sent after its NEVER_ATTEMPTED was accepted"]


def test_the_same_completion_again_after_a_lost_answer_is_allowed(emu: DeadlineEmulator) -> None:
    deadline, _, ids = start_worker(emu)
    _, actions = first_session(deadline, ids)
    done = {actions[0]: succeeded()}
    emu.faults.lost_answers = 1
    with pytest.raises(ClientError) as info:
        deadline.update_worker_schedule(**ids, updatedSessionActions=done)
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert emu.state.actions[actions[0]].status == "SUCCEEDED"  # applied, though the worker cannot tell
    # A throttled retry applies nothing and keeps the worker unsure.
    emu.faults.scripted.append(("UpdateWorkerSchedule", ServiceError("ThrottlingException", "slow down")))
    with pytest.raises(ClientError):
        deadline.update_worker_schedule(**ids, updatedSessionActions=done)
    deadline.update_worker_schedule(**ids, updatedSessionActions=done)
    assert emu.state.violations == []
    # Once a call is answered, the worker knows: a third send is a breach.
    deadline.update_worker_schedule(**ids, updatedSessionActions=done)
    assert emu.state.violations == [f"{actions[0]}: SUCCEEDED sent after its SUCCEEDED was accepted"]


def test_a_different_completion_after_a_lost_answer_is_flagged(emu: DeadlineEmulator) -> None:
    deadline, _, ids = start_worker(emu)
    _, actions = first_session(deadline, ids)
    emu.faults.lost_answers = 1
    with pytest.raises(ClientError):
        deadline.update_worker_schedule(**ids, updatedSessionActions={actions[0]: succeeded()})
    failed = {"completedStatus": "FAILED", "startedAt": now(), "endedAt": now(), "processExitCode": 1}
    deadline.update_worker_schedule(**ids, updatedSessionActions={actions[0]: failed})
    assert emu.state.violations == [f"{actions[0]}: FAILED re-sent after a lost answer differs from the first"]


def test_a_completion_before_an_earlier_open_action_is_flagged(emu: DeadlineEmulator) -> None:
    deadline, _, ids = start_worker(emu)
    _, actions = first_session(deadline, ids)
    # In one call, in session order: accepted.
    deadline.update_worker_schedule(**ids, updatedSessionActions={actions[0]: succeeded(), actions[1]: succeeded()})
    assert emu.state.violations == []
    # The third action's completion while the (listed) fourth is open is fine; the fourth's
    # NEVER_ATTEMPTED before the third's completion is not, even in the same call.
    late = {actions[3]: {"completedStatus": "NEVER_ATTEMPTED"}, actions[2]: succeeded()}
    deadline.update_worker_schedule(**ids, updatedSessionActions=late)
    assert emu.state.violations == [f"{actions[3]}: NEVER_ATTEMPTED while earlier {[actions[2]]!r} are open"]


def test_an_error_answer_applies_none_of_the_call(emu: DeadlineEmulator) -> None:
    deadline, _, ids = start_worker(emu)
    _, actions = first_session(deadline, ids)
    with pytest.raises(ClientError) as info:
        deadline.update_worker_schedule(
            **ids, updatedSessionActions={actions[0]: succeeded(), "sessionaction-nope-0": succeeded()}
        )
    assert info.value.response["Error"]["Code"] == "ValidationException"
    assert emu.state.actions[actions[0]].status == "ASSIGNED"
    deadline.update_worker_schedule(**ids, updatedSessionActions={actions[0]: succeeded()})
    assert emu.state.violations == []


def test_latency_delays_every_answer() -> None:
    job = make_job(simple_template(1))
    with DeadlineEmulator(job, latency_ms=60, jitter_ms=20) as emu:
        deadline, logs = clients(emu)
        ids = {"farmId": emu.state.options.farm_id, "fleetId": emu.state.options.fleet_id}
        deadline.create_worker(**ids)  # the first call also opens the connection
        took = []
        for _ in range(5):
            started = time.monotonic()
            deadline.create_worker(**ids)
            took.append(time.monotonic() - started)
        started = time.monotonic()
        with pytest.raises(ClientError):
            logs.put_log_events(logGroupName="nope", logStreamName="x", logEvents=[{"timestamp": 1, "message": "m"}])
        took.append(time.monotonic() - started)
    assert min(took) >= 0.060, took


def test_negative_latency_is_refused() -> None:
    with pytest.raises(ValueError, match=r"latency_ms \(-1\)"):
        DeadlineEmulator(make_job(simple_template(1)), latency_ms=-1)


def test_a_second_schedule_call_while_one_is_open_is_refused_as_concurrent_modification() -> None:
    import concurrent.futures

    with DeadlineEmulator(make_job(simple_template(4)), latency_ms=300) as emu:
        deadline, _, ids = start_worker(emu)
        first = deadline.update_worker_schedule(**ids)["assignedSessions"]  # the session, before any overlap
        (session_id,) = first
        action = first[session_id]["sessionActions"][0]["sessionActionId"]
        update = {action: {"startedAt": now(), "completedStatus": "SUCCEEDED", "endedAt": now(), "processExitCode": 0}}
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            open_call = pool.submit(deadline.update_worker_schedule, **ids, updatedSessionActions=update)
            emu.wait_for(lambda _: emu.schedule_call_open(ids["workerId"]), timeout=30, what="the open call")
            second = pool.submit(deadline.update_worker_schedule, **ids)
            with pytest.raises(ClientError) as refused:
                second.result(30)
            answered = open_call.result(30)
        assert refused.value.response["Error"]["Code"] == "ConflictException"
        assert refused.value.response["reason"] == "CONCURRENT_MODIFICATION"
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 409
        assert emu.state.concurrent_schedule_calls == 1
        # The open call was applied as usual; the refused one changed nothing.
        assert emu.state.actions[action].status == "SUCCEEDED"
        assert session_id in answered["assignedSessions"]
        assert emu.state.violations == []
        # Once the open call is answered, the next one goes through.
        deadline.update_worker_schedule(**ids)
        assert emu.state.concurrent_schedule_calls == 1
