"""The full command line of an adaptor (everything except the light ``daemon run``/``daemon stop`` path).

Exit codes: 0 success, 1 the action failed, 2 bad input (data, rules, configuration, usage),
3 no daemon or daemon busy (`daemon stop` with no daemon to stop: 0), 128+N canceled by signal N.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from types import FrameType

from .. import __version__
from .adaptor import Adaptor
from .protocol import EXIT_FAILED, EXIT_OK, EXIT_USAGE, PROTOCOL_VERSION, connection_file_path

DATA_HELP = "JSON or YAML, inline or file://path"


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Run an adaptor once, or keep it warm in a daemon.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="start, run once, stop and clean up, in this process")
    run.add_argument("--init-data", help=f"init data, {DATA_HELP}")
    run.add_argument("--run-data", help=f"run data, {DATA_HELP}")
    run.add_argument("--path-mapping-rules", help=f"path-mapping rules, {DATA_HELP}")

    daemon = sub.add_parser("daemon", help="a background daemon serving many runs")
    dsub = daemon.add_subparsers(dest="daemon_command", required=True)
    start = dsub.add_parser("start", help="start the daemon and the adaptor; returns when ready")
    start.add_argument("--connection-file", required=True)
    start.add_argument("--init-data", help=f"init data, {DATA_HELP}")
    start.add_argument("--path-mapping-rules", help=f"path-mapping rules, {DATA_HELP}")
    start.add_argument(
        "--idle-timeout",
        type=float,
        default=None,
        help="stop the daemon after this many seconds without a client (default 900, 0: never)",
    )
    drun = dsub.add_parser("run", help="run one task in the daemon; repeatable")
    drun.add_argument("--connection-file", required=True)
    drun.add_argument("--run-data", help=f"run data, {DATA_HELP}")
    drun.add_argument(
        "--init-data", help="start the daemon with this init data first if none answers (for Flamenco exec)"
    )
    drun.add_argument("--path-mapping-rules", help="with --init-data: rules for a daemon started here")
    drun.add_argument("--idle-timeout", type=float, default=None, help="with --init-data: as for daemon start")
    stop = dsub.add_parser("stop", help="stop the adaptor and the daemon")
    stop.add_argument("--connection-file", required=True)

    sub.add_parser("show-config", help="print the effective adaptor configuration and where it came from")
    sub.add_parser("version-info", help="print adaptor and runtime versions")
    return parser


def main(adaptor: type[Adaptor] | str, argv: list[str], prog: str) -> int:
    args = _parser(prog).parse_args(argv)
    spec = adaptor if isinstance(adaptor, str) else None
    if args.command == "daemon":
        from . import client, daemon

        cf = connection_file_path(args.connection_file)
        if args.daemon_command == "stop":
            return client.stop(cf)
        if spec is None:
            from .runtime import adaptor_spec

            spec = adaptor_spec(adaptor)  # type: ignore[arg-type]
        idle = daemon.DEFAULT_IDLE_TIMEOUT if args.idle_timeout is None else args.idle_timeout
        if args.daemon_command == "start":
            return daemon.start_daemon(spec, cf, args.init_data, args.path_mapping_rules, idle)
        # daemon run with --init-data: start a daemon first unless one answers.
        if args.init_data is not None and client.ping(cf) is None:
            code = daemon.start_daemon(spec, cf, args.init_data, args.path_mapping_rules, idle)
            if code != EXIT_OK and client.ping(cf) is None:
                return code
        run_data = args.run_data
        source = "inline"
        if run_data is not None and run_data.startswith("file://"):
            from .runtime import UsageError, read_data_arg

            try:
                run_data, source = read_data_arg("run-data", run_data)
            except UsageError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return EXIT_USAGE
        return client.perform(cf, "run", run_data, source)

    from .runtime import load_adaptor_class

    cls = load_adaptor_class(adaptor) if isinstance(adaptor, str) else adaptor
    if args.command == "version-info":
        info = {
            "adaptor": cls.adaptor_name(),
            "adaptor_version": cls.version,
            "runtime": "flamenco_deadline_worker.adaptor",
            "runtime_version": __version__,
            "protocol_version": PROTOCOL_VERSION,
        }
        print(json.dumps(info, indent=2))
        return EXIT_OK
    if args.command == "show-config":
        return _show_config(cls)
    return _run_once(cls, args.init_data, args.run_data, args.path_mapping_rules)


def _show_config(cls: type[Adaptor]) -> int:
    from .config import ConfigError, collect_layers, load_config

    try:
        config, layers = load_config(cls.adaptor_name(), cls.default_config, cls.config_schema)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(config, indent=2, sort_keys=True))
    sources = ", ".join(layer.source for layer in layers or collect_layers(cls.adaptor_name(), cls.default_config))
    print(f"# layers, later ones win: {sources}", file=sys.stderr)
    return EXIT_OK


def _run_once(cls: type[Adaptor], init_arg: str | None, run_arg: str | None, rules_arg: str | None) -> int:
    """The whole lifecycle in this process; SIGINT/SIGTERM cancel the current action."""
    import signal

    from . import output
    from .runtime import Result, Session, UsageError, build_adaptor, read_data_arg

    output.install_logging()
    try:
        init_text, init_source = read_data_arg("init-data", init_arg)
        run_text, run_source = read_data_arg("run-data", run_arg)
        rules_text, rules_source = read_data_arg("path-mapping-rules", rules_arg) if rules_arg else (None, "")
        adaptor = build_adaptor(cls, init_text, init_source, rules_text, rules_source)
    except UsageError as exc:
        output.emit(f"openjd_fail: {exc}")
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    session = Session(adaptor)
    got_signal: list[int] = []
    results: list[Result] = []
    done = threading.Event()

    def lifecycle() -> None:
        try:
            first = session.perform("start")
            results.append(first)
            if first.ok and not got_signal:
                results.append(session.perform("run", run_text, run_source))
                results.append(session.perform("stop"))
            else:
                results.append(session.perform("cleanup"))
        finally:
            done.set()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        got_signal.append(signum)
        session.cancel(f"signal {signal.Signals(signum).name}")

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    threading.Thread(target=lifecycle, name="adaptor", daemon=True).start()
    while not done.wait(3600):
        pass
    if got_signal:
        return 128 + got_signal[0]
    for result in results:
        if not result.ok:
            if result.message:
                print(f"error: {result.message}", file=sys.stderr)
            return result.code or EXIT_FAILED
    return EXIT_OK
