"""TaskRunner: runs a task's commands in order and turns what happens into queued updates."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from flamenco_deadline_worker import private
from flamenco_deadline_worker.core.hooks import AgentLog
from flamenco_deadline_worker.core.model import Outcome, Task, TaskStatus, Update
from flamenco_deadline_worker.runner import containment, process
from flamenco_deadline_worker.runner.commands import base as commands
from flamenco_deadline_worker.upstream.queue import TaskUpdateQueue

log = logging.getLogger(__name__)

OutputCallback = Callable[[str, str], None]  # (task id, path of a produced file)


class TaskReporter:
    """Sends a task's log lines, activity and steps through the queue; also keeps the task log file."""

    def __init__(
        self,
        queue: TaskUpdateQueue,
        task: Task,
        log_file: Path | None,
        activity_interval: float,
        on_output: OutputCallback | None,
    ) -> None:
        self.queue = queue
        self.task = task
        self.activity_interval = activity_interval
        self.steps_completed = task.steps_completed
        self._on_output = on_output
        self._activity: str | None = None
        self._activity_dirty = False
        self._last_activity_sent = 0.0
        self._activity_timer: asyncio.TimerHandle | None = None
        self._in_flight: set[asyncio.Future[None]] = set()
        self._file: IO[str] | None = None
        if log_file is not None:
            private.make_dirs(log_file.parent)
            self._file = open(log_file, "a", encoding="utf-8", errors="backslashreplace", opener=private.opener)

    # The hot path: every line of every child goes through here.
    def log(self, line: str) -> None:
        text = line + "\n"
        self.queue.put_log(self.task.id, text)
        if self._file is not None:
            try:
                self._file.write(text)
            except OSError as exc:
                self._file_failed(exc)

    def _file_failed(self, exc: OSError) -> None:
        """The local copy is a convenience: a full disk must not fail the task (the queue keeps every line)."""
        log.error("cannot write the task log file %s (%s); it stops here, the service still gets every line",
                  getattr(self._file, "name", "?"), exc.strerror or exc)
        file, self._file = self._file, None
        try:
            if file is not None:
                file.close()
        except OSError:
            pass

    def activity(self, text: str) -> None:
        self._activity = text
        self._activity_dirty = True
        self._maybe_send_activity()

    def step_done(self, count: int = 1) -> None:
        self.set_steps(self.steps_completed + count)

    def set_steps(self, steps: int) -> None:
        limit = self.task.steps_total or steps
        steps = min(max(steps, 0), limit)
        if steps != self.steps_completed:
            self.steps_completed = steps
            self._activity_dirty = True
            self._maybe_send_activity()

    def output_produced(self, path: str) -> None:
        if self._on_output is not None:
            self._on_output(self.task.id, path)

    def _maybe_send_activity(self) -> None:
        if not self._activity_dirty:
            return
        wait = self._last_activity_sent + self.activity_interval - time.monotonic()
        if wait > 0:
            # Throttled: send the latest state when the interval is over, unless a status comes first.
            if self._activity_timer is None:
                self._activity_timer = asyncio.get_running_loop().call_later(wait, self._activity_due)
            return
        self._last_activity_sent = time.monotonic()
        self._activity_dirty = False
        # put() commits in the background; the queue's FIFO lock keeps the order of updates.
        sending = asyncio.ensure_future(self.queue.put(self._progress_update()))
        self._in_flight.add(sending)
        sending.add_done_callback(self._in_flight.discard)

    def _activity_due(self) -> None:
        self._activity_timer = None
        self._maybe_send_activity()

    def _progress_update(self, **fields: Any) -> Update:
        return Update(
            task_id=self.task.id,
            activity=fields.get("activity", self._activity),
            steps_completed=self.steps_completed,
            status=fields.get("status"),
        )

    async def status(self, status: TaskStatus, activity: str) -> None:
        self._activity = activity
        self._activity_dirty = False
        if self._activity_timer is not None:
            self._activity_timer.cancel()
            self._activity_timer = None
        # Activity updates still being committed in the background come first: a status awaited
        # here would otherwise take the write lock before they start, and a stale activity and
        # step count would reach the service after the final status.
        if self._in_flight:
            await asyncio.gather(*list(self._in_flight), return_exceptions=True)
        await self.queue.put(self._progress_update(status=status.value, activity=activity))

    def close(self) -> None:
        if self._activity_timer is not None:
            self._activity_timer.cancel()
            self._activity_timer = None
        if self._file is not None:
            try:
                self._file.close()
            except OSError as exc:
                log.error("cannot write the end of the task log file %s (%s)", self._file.name, exc.strerror or exc)
            self._file = None


class CommandContext:
    """The runner's side of ``commands.Context``."""

    def __init__(
        self,
        task: Task,
        workdir: Path,
        reporter: TaskReporter,
        limits: process.ProcessLimits,
        run_as: process.RunAs | None,
        file_rules: commands.FileRules,
        task_env: Mapping[str, str] | None = None,
    ) -> None:
        self.task_env = dict(task_env or {})
        self.task_id = task.id
        self.job_id = task.job_id
        self.workdir = workdir
        self.reporter: commands.Reporter = reporter
        self.limits = limits
        self.run_as = run_as
        self.file_rules = file_rules
        # Reading pauses while the queue's log buffer is full (a slow or full disk): see process.run_process.
        self.pace = reporter.queue.room

    async def run_process(
        self,
        argv: Sequence[str],
        *,
        on_line: Callable[[str], None] | None = None,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> int:
        reporter = self.reporter
        if on_line is None:
            handler = reporter.log
        else:
            def handler(line: str) -> None:
                reporter.log(line)
                on_line(line)

        reporter.log(f"$ {' '.join(argv)}")
        if self.task_env:
            env = {**(os.environ if env is None else env), **self.task_env}
        try:
            code = await process.run_process(
                argv, handler, cwd=cwd or self.workdir, env=env, limits=self.limits, run_as=self.run_as,
                pace=self.pace,
            )
        except process.ProcessTimeout as exc:
            raise commands.CommandError(str(exc)) from None
        except FileNotFoundError as exc:
            raise commands.CommandError(f"cannot start {argv[0]!r}: {exc.strerror}") from None
        except PermissionError as exc:
            raise commands.CommandError(f"cannot start {argv[0]!r}: {exc.strerror}") from None
        reporter.log(f"exit code {code}")
        return code


class TaskRunner:
    def __init__(
        self,
        queue: TaskUpdateQueue,
        *,
        agent_log: AgentLog,
        work_root: Path,
        logs_dir: Path | None,
        limits: process.ProcessLimits,
        run_as: process.RunAs | None = None,
        activity_interval: float = 1.0,
        on_output: OutputCallback | None = None,
        file_rules: commands.FileRules | None = None,
        task_env: Mapping[str, str] | None = None,
    ) -> None:
        self.task_env = dict(task_env or {})  # added to every task process's environment
        self.queue = queue
        self.records = agent_log
        self.work_root = work_root
        # File commands: only the work directory unless the composition root says more.
        self.file_rules = file_rules or commands.FileRules(roots=(str(work_root),))
        self.logs_dir = logs_dir
        self.limits = limits
        self.run_as = run_as
        self.activity_interval = activity_interval
        self.on_output = on_output
        self.current_task: Task | None = None
        self.current_command: str | None = None
        self._job: asyncio.Task[Outcome] | None = None
        self._abort_reason: str | None = None

    def abort(self, reason: str) -> bool:
        """Stop the running task (its processes are killed); run() then returns ABORTED."""
        if self._job is None or self._job.done():
            return False
        self._abort_reason = reason
        self._job.cancel()
        return True

    async def run(self, task: Task) -> Outcome:
        self.current_task = task
        self._abort_reason = None
        self._job = asyncio.ensure_future(self._run(task))
        try:
            return await asyncio.shield(self._job)
        except asyncio.CancelledError:
            if self._abort_reason is not None and self._job.cancelled():
                return Outcome.ABORTED
            # Cancelled from outside (worker shutdown): stop the commands too, then propagate.
            self._job.cancel()
            await asyncio.gather(self._job, return_exceptions=True)
            raise
        finally:
            self.current_task = None
            self.current_command = None
            self._job = None

    async def _run(self, task: Task) -> Outcome:
        log_file = self.logs_dir / _safe(task.job_id) / f"{_safe(task.id)}.log" if self.logs_dir else None
        reporter = TaskReporter(self.queue, task, log_file, self.activity_interval, self.on_output)
        workdir = self.work_root / _safe(task.id)
        # Structured records see a task as a session of its job; each command is one action.
        self.records.session_starting(task.id, task.job_id, task_name=task.name, job_type=task.job_type)
        if log_file is not None:
            self.records.session_logs(task.id, task.job_id, log_file)
        self.records.session_user(task.id, task.job_id, self.run_as.user if self.run_as else None)
        self.records.session_add(task.id, task.job_id, [_action_id(task, i) for i in range(1, len(task.commands) + 1)])
        started = time.monotonic()
        self._failure = ""
        outcome = Outcome.ABORTED
        # Processes an earlier task kept for its job's next tasks (a warm adaptor daemon) end with that job.
        containment.active().job_starting(task.job_id)
        try:
            workdir.mkdir(parents=True, exist_ok=True)
            self.records.filesystem("Create", workdir, "task working directory", logging.DEBUG)
            if self.run_as is not None:
                try:
                    _hand_over(workdir, self.run_as.user)
                except (OSError, LookupError) as exc:
                    outcome = await self._fail(
                        reporter,
                        f"cannot prepare working directory {str(workdir)!r} for job_user "
                        f"{self.run_as.user!r}: {exc}",
                    )
                    return outcome
            outcome = await self._run_commands(task, reporter, workdir)
            return outcome
        except asyncio.CancelledError:
            reason = self._abort_reason or "the worker is shutting down"
            reporter.log(f"task aborted: {reason}")
            containment.active().kill_kept_now()  # an abort ends the job's kept processes too
            raise
        finally:
            await self.queue.commit_logs()
            reporter.close()
            shutil.rmtree(workdir, ignore_errors=True)
            self.records.filesystem("Delete", workdir, "task working directory", logging.DEBUG)
            seconds = time.monotonic() - started
            if outcome is Outcome.FAILED:
                self.records.session_failed(task.id, task.job_id, self._failure, seconds=round(seconds, 3))
            else:
                status = "completed" if outcome is Outcome.COMPLETED else "canceled"
                self.records.session_complete(task.id, task.job_id, status, seconds)
            self.records.session_remove(task.id, task.job_id, outcome.value)

    _failure = ""

    async def _run_commands(self, task: Task, reporter: TaskReporter, workdir: Path) -> Outcome:
        await reporter.status(TaskStatus.ACTIVE, f"starting task {task.name}")
        ctx = CommandContext(task, workdir, reporter, self.limits, self.run_as, self.file_rules, self.task_env)
        steps_before = task.steps_completed
        for index, spec in enumerate(task.commands, start=1):
            self.current_command = spec.name
            try:
                command_cls = commands.find(spec.name)
                params = command_cls.validate(spec.parameters)
            except commands.CommandError as exc:
                return await self._fail(reporter, f"command {index} ({spec.name!r}) is invalid: {exc}")
            reporter.activity(f"running {spec.name} ({index}/{len(task.commands)})")
            started = time.monotonic()
            action = _action_id(task, index)
            self.records.action_start(task.id, action, spec.name)
            try:
                await command_cls().run(ctx, params)
            except commands.CommandError as exc:
                self.records.action_end(task.id, action, "failed", time.monotonic() - started)
                return await self._fail(reporter, f"command {index} ({spec.name}) failed: {exc}")
            except asyncio.CancelledError:
                self.records.action_cancel(task.id, action, self._abort_reason or "the worker is shutting down")
                self.records.action_end(task.id, action, "canceled", time.monotonic() - started)
                raise
            except Exception as exc:  # a command's bug fails the task, never the worker
                log.exception("command %s of task %s raised", spec.name, task.id)
                self.records.action_end(task.id, action, "failed", time.monotonic() - started)
                return await self._fail(reporter, f"command {index} ({spec.name}) crashed: {exc!r}")
            self.records.action_end(task.id, action, "succeeded", time.monotonic() - started)
            steps_before += spec.total_step_count
            reporter.set_steps(max(reporter.steps_completed, steps_before))
            log.debug("command %s of task %s took %.3f s", spec.name, task.id, time.monotonic() - started)
        reporter.set_steps(task.steps_total or reporter.steps_completed)
        await reporter.status(TaskStatus.COMPLETED, f"completed {len(task.commands)} command(s)")
        return Outcome.COMPLETED

    async def _fail(self, reporter: TaskReporter, message: str) -> Outcome:
        self._failure = message
        reporter.log(message)
        await reporter.status(TaskStatus.FAILED, message)
        return Outcome.FAILED


def _hand_over(workdir: Path, user: str) -> None:
    """Make the task's working directory usable by the job user.

    As root it becomes theirs.  Without root (the sudo case) we cannot chown, so the directory is
    opened to everyone instead; its parent, the worker's work_dir, must be traversable by that user.
    """
    import os

    if os.geteuid() == 0:
        shutil.chown(workdir, user=user)
    else:
        workdir.chmod(0o777)


def _action_id(task: Task, index: int) -> str:
    """The id of a task's command as a session action: '<task id>:<1-based index>'."""
    return f"{task.id}:{index}"


def _safe(name: str) -> str:
    """A service-given id as one harmless path component."""
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip(".")
    return cleaned or "_"
