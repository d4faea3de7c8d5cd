"""The input sync of a job with job attachments, by this worker and by the AWS worker agent, on the same
emulator and the same local S3 server.

    .venv/bin/python benchmarks/bench_attachments.py [--files 100] [--mb 50] [--tasks 20] [--only ours|aws]

The submitter's side (the ``deadline`` library's S3AssetManager, as ``deadline bundle submit`` runs it)
makes ``--files`` input files of ``--mb`` MB in all, hashes them and uploads them with their input
manifest to a moto S3 server on 127.0.0.1; the emulator serves a job of ``--tasks`` tasks that hash
their share of the inputs and write one output file each.  Prints, for each agent, one JSON line:

- ``sync_seconds``: the syncInputJobAttachments action, from its startedAt to its endedAt as the agent
  reported them (the library's import and S3 client set-up included, as each agent does them);
- ``peak_rss_mib``: the agent process's high-water mark (VmHWM) over the whole job;
- ``peak_tree_rss_mib``: the most the agent and all its children held at once (sampled every 50 ms):
  the AWS agent downloads and uploads in child processes, this worker in threads of its own process;
- ``run_seconds``: first action to last task SUCCEEDED (each task's output upload included);
- whether every task's output reached S3 with its output manifest (``outputs_match``).

Both run inside a loopback-only network namespace (the AWS agent probes EC2 instance metadata by
itself), each with a fresh emulator and S3 server; where no namespace can be made, only this worker
runs, outside one, and the AWS agent is skipped with the reason.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from flamenco_deadline_worker.testing import netns
from flamenco_deadline_worker.testing.attachments_job import attachments_template
from flamenco_deadline_worker.testing.deadline_emulator.aws_agent import agent_executable
from flamenco_deadline_worker.testing.deadline_emulator.drive import AWS, OURS, RunSpec, run_isolated, run_job


def run_one(name: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    spec = RunSpec(
        name,
        attachments_template(args.tasks, args.files),
        str(workdir),
        update_interval_seconds=1,
        log_stream_rate_is_violation=name != AWS,  # see bench_deadline.py
        timeout=1800,
        attachment_files=args.files,
        attachment_bytes=int(args.mb * 1_000_000),
    )
    problem = netns.namespace_problem()
    if name == AWS:
        if problem is not None:
            return {"agent": AWS, "skipped": problem}
        spec.aws_executable = str(agent_executable())  # from PyPI, outside the namespace
    result = run_isolated(spec) if problem is None else run_job(spec)
    figures = result.pop("attachments")
    return {
        "agent": name,
        "files": args.files,
        "mb": args.mb,
        "sync_status": ",".join(figures["sync_statuses"]),
        "sync_seconds": figures["sync_seconds"][0] if figures["sync_seconds"] else None,
        "peak_rss_mib": result["peak_rss_mib"],
        "peak_tree_rss_mib": result["peak_tree_rss_mib"],
        "run_seconds": result["run_seconds"],
        "output_manifests": figures["output_manifests"],
        "outputs_match": figures["outputs_match"],
        "violations": len(result["violations"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--mb", type=float, default=50.0, help="the inputs' total size, in MB")
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--only", choices=("ours", "aws"))
    args = parser.parse_args()
    if args.files % args.tasks:
        parser.error(f"--files ({args.files}) must be a multiple of --tasks ({args.tasks})")
    names = {"ours": [OURS], "aws": [AWS], None: [OURS, AWS]}[args.only]
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-attachments-") as tmp:
        for name in names:
            results[name] = run_one(name, args, Path(tmp) / name)
            print(json.dumps(results[name]), flush=True)
    ours, aws = results.get(OURS), results.get(AWS)
    if ours and aws and ours.get("sync_seconds") and aws.get("sync_seconds"):
        print(
            f"input sync: {ours['sync_seconds']:.2f} s against {aws['sync_seconds']:.2f} s "
            f"({aws['sync_seconds'] / ours['sync_seconds']:.2f}x); peak RSS of the agent's processes: "
            f"{ours['peak_tree_rss_mib']:.1f} MiB against {aws['peak_tree_rss_mib']:.1f} MiB"
        )


if __name__ == "__main__":
    main()
