"""Configuration: TOML files layered with environment variables and flags, validated key by key.

Layers, later wins: built-in defaults < /etc/flamenco-worker/flamenco-worker.cfg < ./flamenco-worker.cfg
(or the --config files instead of those two) < <home>/.flamenco-worker.cfg < FLAMENCO_WORKER_* < flags.
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import ssl
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

log = logging.getLogger(__name__)

TABLE = "flamenco-worker"
SYSTEM_CONFIG = Path("/etc/flamenco-worker/flamenco-worker.cfg")
LOCAL_CONFIG = Path("flamenco-worker.cfg")
HOME_CONFIG_NAME = ".flamenco-worker.cfg"
ENV_PREFIX = "FLAMENCO_WORKER_"
# Flamenco 3 workers read the worker name from this; FLAMENCO_WORKER_WORKER_NAME wins when both are set.
SHORT_NAME_ENV = "FLAMENCO_WORKER_NAME"

EXIT_CONFIG_ERROR = 2
# Keys whose command-line flag is not simply --key-name, so error messages name the real flag.
FLAGS = {"manager_url": "--manager", "deadline_run_jobs_as_agent_user": "--run-jobs-as-agent-user"}


class ConfigError(Exception):
    """A configuration value is wrong; the message reads `source: key: what is wrong`."""


def _positive(v: Any) -> str | None:
    return None if v > 0 else "must be greater than 0"


def _non_negative(v: Any) -> str | None:
    return None if v >= 0 else "must be 0 or more"


def _exit_code(v: Any) -> str | None:
    return None if 0 < v < 256 and v != EXIT_CONFIG_ERROR else "must be an exit code from 1 to 255, not 2"


def _oom(v: Any) -> str | None:
    return None if -1000 <= v <= 1000 else "must be between -1000 and 1000"


def _backend(v: Any) -> str | None:
    return None if v in ("flamenco", "deadline") else "must be 'flamenco' or 'deadline'"


def _log_level(v: Any) -> str | None:
    ok = ("debug", "info", "warning", "error")
    return None if v.lower() in ok else f"must be one of {', '.join(ok)}"


def _containment(v: Any) -> str | None:
    ok = ("auto", "cgroup", "subreaper", "process-group")
    return None if v in ok else f"must be one of {', '.join(ok)}"


def _absolute_paths(v: Any) -> str | None:
    relative = [p for p in v if not Path(p).expanduser().is_absolute()]
    return f"must list absolute paths, not {relative!r}" if relative else None


def _command(v: Any) -> str | None:
    return None if v else 'must name a program and its arguments, e.g. ["sudo", "-n", "/usr/sbin/shutdown", "now"]'


def _host_port(v: Any) -> str | None:
    host, sep, port = v.rpartition(":")
    if not (sep and host and port.isdigit() and 0 < int(port) < 65536):
        return "must be HOST:PORT, e.g. 239.255.255.250:1900"
    return None


def _url(v: Any) -> str | None:
    if not v:
        return None
    if not (v.startswith("http://") or v.startswith("https://")):
        return "must start with http:// or https://"
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(v)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    if not parts.hostname:
        return "must name the Manager's host, e.g. http://manager:8080/"
    if parts.query or parts.fragment:
        return "must not have a ?query or #fragment"
    return None


@attrs.frozen
class Key:
    """One configuration key: its type, default, check and the line that documents it."""

    name: str
    type: type
    default: Any
    doc: str
    check: Callable[[Any], str | None] | None = None
    secret: bool = False


KEYS: tuple[Key, ...] = (
    Key("backend", str, "flamenco", "Service to work for: 'flamenco' or 'deadline'.", _backend),
    Key("manager_url", str, "", "URL of the Flamenco Manager, e.g. http://manager:8080/; empty: find it by UPnP/SSDP.",
        _url),
    Key("manager_discovery_address", str, "239.255.255.250:1900",
        "Where the SSDP search for a Manager goes (host:port) when manager_url is empty.", _host_port),
    Key("manager_discovery_timeout_seconds", float, 10.0, "How long to search for a Manager before giving up.",
        _positive),
    Key("worker_name", str, "", "Name shown in the Manager; empty means this host's name."),
    Key(
        "task_types",
        list,
        ["blender", "ffmpeg", "file-management", "misc"],
        "Task types this worker signs on with.",
    ),
    Key("task_update_queue_db", str, "flamenco-worker.db", "SQLite file of the durable update queue."),
    Key("logs_dir", str, "flamenco-worker-logs", "Directory for the agent log and per-task logs."),
    Key("work_dir", str, "flamenco-worker-tasks", "Directory holding a working directory per task."),
    Key("may_i_run_interval_seconds", float, 5.0,
        "Ask may-i-run after this long without contact about the running task (a delivered update counts; "
        "asked at least every twice this).", _positive),
    Key("task_poll_interval_seconds", float, 2.0,
        "First wait when the Manager has no task; each empty answer waits longer (jitter added).", _positive),
    Key("task_poll_max_interval_seconds", float, 20.0,
        "Longest wait between two task requests of an idle worker.", _positive),
    Key("pre_task_check_read", list, [], "Paths that must be readable before a task is fetched (e.g. shared storage)."),
    Key("pre_task_check_write", list, [], "Directories that must be writable before a task is fetched."),
    Key("work_dir_min_free_mib", int, 256, "No task is fetched while work_dir has less free space (MiB; 0: no check).",
        _non_negative),
    Key("asleep_poll_interval_seconds", float, 5.0, "How often an asleep worker asks for a state change.",
        _positive),
    Key("push_log_max_interval_seconds", float, 1.0, "Longest time a log line waits before it is sent.",
        _non_negative),
    Key("push_log_max_bytes", int, 256 * 1024, "Most log bytes sent in one task update.", _positive),
    Key("push_act_max_interval_seconds", float, 1.0, "Shortest time between two activity-only updates.",
        _non_negative),
    Key("queue_backlog_max_bytes", int, 64 * 1024 * 1024,
        "No new task is fetched while undelivered updates exceed this size.", _positive),
    Key("shutdown_flush_seconds", float, 10.0, "How long shutdown tries to deliver queued updates.",
        _non_negative),
    Key("update_timeout_seconds", float, 60.0,
        "How long a task update may take; after a timeout it is sent again with twice as long (up to 10 min).",
        _positive),
    Key("kill_grace_seconds", float, 10.0, "Time between SIGTERM and SIGKILL when a task is aborted.",
        _non_negative),
    Key("command_timeout_seconds", float, 0.0, "Fail a command running longer than this (0: no limit).",
        _non_negative),
    Key("no_output_timeout_seconds", float, 0.0,
        "Fail a command printing nothing for this long (0: no limit).", _non_negative),
    Key("job_user", str, "", "Run task processes as this user (empty: as the worker's user)."),
    Key("file_command_roots", list, [],
        "Directories (absolute) where make-directory, move-directory and copy-file may act, besides work_dir.",
        _absolute_paths),
    Key("process_containment", str, "auto",
        "How task processes are held: auto, cgroup, subreaper or process-group (the best one that works).",
        _containment),
    Key("oom_score_adj", int, 500, "oom_score_adj of task processes, so the kernel kills them first.", _oom),
    Key("restart_exit_code", int, 47, "Exit code when the Manager asks the worker to restart.", _exit_code),
    Key("structured_logs", bool, False, "Write the agent log as one JSON object per line."),
    Key("log_level", str, "info", "Agent log level: debug, info, warning or error.", _log_level),
    Key("tls_ca_file", str, "",
        "Extra CA bundle (PEM) for an https Manager, besides the system store; relative to the home. "
        "TLS is always verified."),
    Key("farm_id", str, "", "Deadline Cloud farm id (backend = 'deadline')."),
    Key("fleet_id", str, "", "Deadline Cloud fleet id (backend = 'deadline')."),
    Key("deadline_region", str, "", "AWS region of the farm; empty: $AWS_REGION or $AWS_DEFAULT_REGION."),
    Key("session_root_dir", str, "deadline-sessions", "Directory holding Deadline Cloud session directories."),
    Key("deadline_delete_worker_on_stop", bool, False, "Delete the Deadline Cloud worker when the agent stops."),
    Key("deadline_retain_session_dir", bool, False,
        "Keep a Deadline Cloud session's working directory after the session ends (for debugging)."),
    Key("deadline_run_jobs_as_agent_user", bool, False,
        "Run every Deadline Cloud session as the agent's own user, ignoring the queue's jobRunAsUser."),
    Key("deadline_shutdown_on_stop", bool, False,
        "Shut the host down (deadline_shutdown_command) once the service has stopped the worker."),
    Key("deadline_shutdown_command", list, ["sudo", "-n", "/usr/sbin/shutdown", "now"],
        "The command (no shell) deadline_shutdown_on_stop runs.", _command),
    Key("deadline_disallow_instance_profile", bool, False,
        "Take no work while the EC2 instance profile can be reached through IMDS (as the AWS agent's option)."),
    Key("deadline_instance_profile_wait_seconds", float, 120.0,
        "How long deadline_disallow_instance_profile waits for the instance profile to be disassociated.",
        _non_negative),
    Key("deadline_python_optimize", bool, True,
        "Run the Deadline Cloud agent under python -OO (it re-executes itself): no docstrings, about 1.7 MiB less."),
    Key("worker_id", str, "", "Written by the worker at registration; keep it with worker_secret."),
    Key("worker_secret", str, "", "Written by the worker at registration; never logged.", secret=True),
)
KEYS_BY_NAME = {k.name: k for k in KEYS}


@attrs.frozen
class WorkerConfig:
    """The effective configuration.  Paths are absolute, resolved against ``home``."""

    home: Path
    home_config: Path
    backend: str
    manager_url: str
    manager_discovery_address: str
    manager_discovery_timeout_seconds: float
    worker_name: str
    task_types: tuple[str, ...]
    task_update_queue_db: Path
    logs_dir: Path
    work_dir: Path
    may_i_run_interval_seconds: float
    task_poll_interval_seconds: float
    task_poll_max_interval_seconds: float
    pre_task_check_read: tuple[str, ...]
    pre_task_check_write: tuple[str, ...]
    work_dir_min_free_mib: int
    asleep_poll_interval_seconds: float
    push_log_max_interval_seconds: float
    push_log_max_bytes: int
    push_act_max_interval_seconds: float
    queue_backlog_max_bytes: int
    shutdown_flush_seconds: float
    update_timeout_seconds: float
    kill_grace_seconds: float
    command_timeout_seconds: float
    no_output_timeout_seconds: float
    job_user: str
    file_command_roots: tuple[str, ...]
    process_containment: str
    oom_score_adj: int
    restart_exit_code: int
    structured_logs: bool
    log_level: str
    tls_ca_file: str
    farm_id: str
    fleet_id: str
    deadline_region: str
    session_root_dir: Path
    deadline_delete_worker_on_stop: bool
    deadline_retain_session_dir: bool
    deadline_run_jobs_as_agent_user: bool
    deadline_shutdown_on_stop: bool
    deadline_shutdown_command: tuple[str, ...]
    deadline_disallow_instance_profile: bool
    deadline_instance_profile_wait_seconds: float
    deadline_python_optimize: bool
    worker_id: str
    worker_secret: str = attrs.field(repr=False)
    sources: Mapping[str, str] = attrs.field(factory=dict, repr=False, eq=False)
    # The [capabilities] table (Deadline Cloud): names added to, or replacing, the detected ones.
    capability_amounts: Mapping[str, float] = attrs.field(factory=dict)
    capability_attributes: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict)

    def source_of(self, key: str) -> str:
        return self.sources.get(key, "default")


def read_toml(path: Path) -> dict[str, Any]:
    """The [flamenco-worker] table of one file; ConfigError names the file on a syntax error."""
    return _read_tables(path)[0]


def _read_tables(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The [flamenco-worker] and [capabilities] tables of one file."""
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
            "save the file as UTF-8"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    table = data.get(TABLE, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [{TABLE}] must be a table")
    for other in data:
        if other not in (TABLE, CAPABILITIES_TABLE):
            log.warning("%s: unknown table or key %r outside [%s], ignored", path, other, TABLE)
    capabilities = data.get(CAPABILITIES_TABLE, {})
    if not isinstance(capabilities, dict):
        raise ConfigError(f"{path}: [{CAPABILITIES_TABLE}] must be a table")
    return table, capabilities


# ---- [capabilities] (Deadline Cloud) -------------------------------------------------------

CAPABILITIES_TABLE = "capabilities"
# The service's own patterns (botocore's deadline model) and list limits.
_AMOUNT_NAME = re.compile(r"([a-zA-Z][a-zA-Z0-9]{0,63}:)?amount(\.[a-zA-Z][a-zA-Z0-9]{0,63})+")
_ATTRIBUTE_NAME = re.compile(r"([a-zA-Z][a-zA-Z0-9]{0,63}:)?attr(\.[a-zA-Z][a-zA-Z0-9]{0,63})+")
_ATTRIBUTE_VALUE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_\-]{0,99}")
MAX_CAPABILITIES = 17  # of each kind, in one UpdateWorker
MAX_ATTRIBUTE_VALUES = 10
STANDARD_AMOUNTS = ("amount.worker.vcpu", "amount.worker.memory", "amount.worker.gpu", "amount.worker.gpu.memory",
                    "amount.worker.disk.scratch")
STANDARD_ATTRIBUTES = ("attr.worker.os.family", "attr.worker.cpu.arch")
_RESERVED_SCOPES = ("worker", "job", "step", "task")  # OpenJD keeps these names for its own capabilities


def _capability_name_problem(name: str, kind: str, pattern: re.Pattern[str], standard: Sequence[str]) -> str | None:
    if len(name) > 100 or not pattern.fullmatch(name):
        example = "amount.licenses or acme:amount.licenses" if kind == "amount" else "attr.site or acme:attr.site"
        return f"is not a valid {kind} capability name (e.g. {example}; letters and digits between dots)"
    if ":" not in name and name.lower() not in standard and name.split(".")[1].lower() in _RESERVED_SCOPES:
        return (f"uses the {kind}.{name.split('.')[1]} scope, which only Open Job Description's own names may use "
                f"({', '.join(standard)})")
    return None


def _dotted_name_hint(where: str, value: Any) -> None:
    if isinstance(value, dict):  # `amount.worker.gpu = 2` without quotes is a nest of TOML tables
        raise ConfigError(f'{where}: write a capability name in quotes, e.g. "amount.worker.gpu" = 2')


def _read_capabilities(
    table: Mapping[str, Any], source: str, amounts: dict[str, float], attributes: dict[str, tuple[str, ...]]
) -> None:
    """Check one file's [capabilities] table and add it to ``amounts`` and ``attributes`` (later wins)."""
    for sub in table:
        if sub not in ("amounts", "attributes"):
            raise ConfigError(f"{source}: [capabilities]: unknown entry {sub!r}; use [capabilities.amounts] "
                              "and [capabilities.attributes]")
    found = table.get("amounts", {})
    if not isinstance(found, dict):
        raise ConfigError(f"{source}: [capabilities.amounts] must be a table of name = number")
    for name, value in found.items():
        where = f"{source}: [capabilities.amounts]: {name!r}"
        _dotted_name_hint(where, value)
        problem = _capability_name_problem(name, "amount", _AMOUNT_NAME, STANDARD_AMOUNTS)
        if problem:
            raise ConfigError(f"{where} {problem}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ConfigError(f"{where} must be a number, 0 or more, got {value!r}")
        amounts[name] = float(value)
    found = table.get("attributes", {})
    if not isinstance(found, dict):
        raise ConfigError(f"{source}: [capabilities.attributes] must be a table of name = [values]")
    for name, value in found.items():
        where = f"{source}: [capabilities.attributes]: {name!r}"
        _dotted_name_hint(where, value)
        problem = _capability_name_problem(name, "attr", _ATTRIBUTE_NAME, STANDARD_ATTRIBUTES)
        if problem:
            raise ConfigError(f"{where} {problem}")
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not 1 <= len(values) <= MAX_ATTRIBUTE_VALUES:
            raise ConfigError(f"{where} must be a list of 1 to {MAX_ATTRIBUTE_VALUES} strings, got {value!r}")
        bad = [v for v in values if not isinstance(v, str) or not _ATTRIBUTE_VALUE.fullmatch(v)]
        if bad:
            raise ConfigError(f"{where}: {bad[0]!r} is not a valid value (a letter or _ first, then letters, "
                              "digits, _ or -; at most 100)")
        attributes[name] = tuple(values)
    for kind, names, standard in (("amounts", amounts, STANDARD_AMOUNTS),
                                  ("attributes", attributes, STANDARD_ATTRIBUTES)):
        total = set(names) | set(standard)
        if len(total) > MAX_CAPABILITIES:
            raise ConfigError(f"{source}: [capabilities.{kind}]: {len(total)} {kind} with the detected ones "
                              f"({len(names)} configured); the service takes at most {MAX_CAPABILITIES}")


def _convert(key: Key, value: Any, source: str, from_text: bool = False) -> Any:
    """Check (and, for text from env vars or --set, parse) one value; ConfigError as `source: key: problem`."""
    if isinstance(value, str) and from_text and key.type is not str:
        value = _parse_env(key, value, source)
    if key.type is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    ok = isinstance(value, key.type) and not (key.type is not bool and isinstance(value, bool))
    if not ok:
        names = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list"}
        shown = "a value of another type (hidden)" if key.secret else repr(value)
        raise ConfigError(f"{source}: {key.name}: must be {names[key.type]}, got {shown}")
    if key.type is float and not math.isfinite(value):
        raise ConfigError(f"{source}: {key.name}: must be a finite number, got {value!r}")
    if key.type is list and not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{source}: {key.name}: must be a list of non-empty strings, got {value!r}")
    if key.check is not None:
        problem = key.check(value)
        if problem:
            shown = "(hidden)" if key.secret else repr(value)
            raise ConfigError(f"{source}: {key.name}: {problem}, got {shown}")
    return value


def _parse_env(key: Key, text: str, source: str) -> Any:
    try:
        if key.type is bool:
            lowered = text.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if key.type is int:
            return int(text)
        if key.type is float:
            return float(text)
        if key.type is list:
            return [part.strip() for part in text.split(",") if part.strip()]
    except ValueError:
        pass
    raise ConfigError(f"{source}: {key.name}: cannot read {text!r} as {key.type.__name__}")


def parse_text(name: str, text: str, source: str) -> Any:
    """One value given as text (e.g. `--set KEY=VALUE`), parsed and checked; ConfigError names ``source``."""
    return _convert(KEYS_BY_NAME[name], text, source, from_text=True)


def load(
    *,
    config_files: Sequence[Path] | None = None,
    home: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> WorkerConfig:
    """Build the effective configuration from every layer."""
    environ = os.environ if environ is None else environ
    home = (home or (Path(environ[ENV_PREFIX + "HOME"]) if environ.get(ENV_PREFIX + "HOME") else Path.home()))
    home = home.expanduser().absolute()
    home_config = home / HOME_CONFIG_NAME

    values: dict[str, Any] = {k.name: k.default for k in KEYS}
    sources: dict[str, str] = {}
    files = list(config_files) if config_files is not None else [SYSTEM_CONFIG, LOCAL_CONFIG]
    files.append(home_config)
    amounts: dict[str, float] = {}
    attributes: dict[str, tuple[str, ...]] = {}
    for path in files:
        if config_files is not None and path in config_files and not path.exists():
            raise ConfigError(f"{path}: --config file does not exist")
        if not path.exists():
            continue
        table, capabilities = _read_tables(path)
        _read_capabilities(capabilities, str(path), amounts, attributes)
        for name, value in table.items():
            key = KEYS_BY_NAME.get(name)
            if key is None:
                log.warning("%s: unknown key %r ignored (known keys: see worker.cfg.example)", path, name)
                continue
            values[name] = _convert(key, value, str(path))
            sources[name] = str(path)

    for key in KEYS:
        env_name = ENV_PREFIX + key.name.upper()
        if key.name == "worker_name" and SHORT_NAME_ENV in environ:
            if env_name not in environ:
                env_name = SHORT_NAME_ENV  # Flamenco 3's own name for it
            elif environ[env_name] != environ[SHORT_NAME_ENV]:
                log.warning("$%s and $%s differ; using $%s = %r", env_name, SHORT_NAME_ENV, env_name,
                            environ[env_name])
        if env_name in environ:
            values[key.name] = _convert(key, environ[env_name], f"${env_name}", from_text=True)
            sources[key.name] = f"${env_name}"

    for name, value in (overrides or {}).items():
        if value is None:
            continue
        values[name] = _convert(KEYS_BY_NAME[name], value, FLAGS.get(name, f"--{name.replace('_', '-')}"))
        sources[name] = "command line"

    values["worker_name"] = values["worker_name"] or socket.gethostname()
    values["task_types"] = tuple(values["task_types"])
    values["file_command_roots"] = tuple(str(Path(p).expanduser()) for p in values["file_command_roots"])
    values["pre_task_check_read"] = tuple(values["pre_task_check_read"])
    values["pre_task_check_write"] = tuple(values["pre_task_check_write"])
    values["deadline_shutdown_command"] = tuple(values["deadline_shutdown_command"])
    values["log_level"] = values["log_level"].lower()
    for name in ("task_update_queue_db", "logs_dir", "work_dir", "session_root_dir"):
        values[name] = home / Path(values[name]).expanduser()
    if values["tls_ca_file"]:
        values["tls_ca_file"] = str(home / Path(values["tls_ca_file"]).expanduser())
    return WorkerConfig(home=home, home_config=home_config, sources=sources, capability_amounts=amounts,
                        capability_attributes=attributes, **values)


def require_manager(config: WorkerConfig, *, discovery: bool = False) -> None:
    """ConfigError when the service is not configured; ``discovery``: an empty manager_url means "search"."""
    if config.backend == "flamenco" and not config.manager_url and not discovery:
        raise ConfigError(
            "manager_url: not set; give --manager URL, set FLAMENCO_WORKER_MANAGER_URL, "
            f"or put manager_url in {SYSTEM_CONFIG} or {config.home_config}"
        )
    if config.backend == "deadline" and not (config.farm_id and config.fleet_id):
        raise ConfigError("farm_id/fleet_id: both are needed with backend = 'deadline' (--farm-id, --fleet-id)")


def check_paths(config: WorkerConfig) -> None:
    """Before a worker starts: every directory it writes can be made, the queue file can be
    written, and ``tls_ca_file`` is a readable CA bundle.  ConfigError as `source: key: problem`."""
    for key in ("logs_dir", "work_dir", "session_root_dir"):
        if key == "session_root_dir" and config.backend != "deadline":
            continue
        problem = _directory_problem(getattr(config, key))
        if problem:
            raise ConfigError(f"{_where(config, key)}: {key}: {problem}")
    queue = config.task_update_queue_db
    problem = _directory_problem(queue.parent)
    if problem:
        problem = f"cannot use {queue}: {problem}"
    elif queue.exists():
        if not queue.is_file():
            problem = f"{queue} is not a file"
        elif not os.access(queue, os.R_OK | os.W_OK):
            problem = f"cannot write {queue}: {_access_error(queue)}"
    if problem:
        raise ConfigError(f"{_where(config, 'task_update_queue_db')}: task_update_queue_db: {problem}")
    if config.tls_ca_file:
        try:
            ssl.create_default_context().load_verify_locations(config.tls_ca_file)
        except ssl.SSLError as exc:  # before OSError: it is one
            problem = f"{config.tls_ca_file} is not a PEM CA bundle ({exc.reason or exc})"
        except OSError as exc:
            problem = f"cannot read {config.tls_ca_file}: {exc.strerror or exc}"
        if problem:
            raise ConfigError(f"{_where(config, 'tls_ca_file')}: tls_ca_file: {problem}")


def _where(config: WorkerConfig, key: str) -> str:
    source = config.source_of(key)
    return "built-in default" if source == "default" else source


def _directory_problem(path: Path) -> str | None:
    """Why ``path`` cannot be (made and) written as a directory, or None."""
    if path.exists():
        if not path.is_dir():
            return f"{path} is a file, not a directory"
        if not os.access(path, os.W_OK | os.X_OK):
            return f"cannot write in {path}: {_access_error(path)}"
        return None
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"cannot create {path}: {parent} is a file, not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot create {path}: {parent}: {_access_error(parent)}"
    return None


def _access_error(path: Path) -> str:
    try:
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            return "read-only file system"
    except OSError as exc:
        return exc.strerror or str(exc)
    return "permission denied"
