"""Updates per second committed to the TaskUpdateQueue (a real SQLite file, WAL, synchronous=FULL).

Prints three figures:
  put_log            log lines/s handed to put_log() and committed to SQLite (lines arrive in chunks of
                     --chunk lines with an event-loop turn in between, as the child-output pump feeds them)
  runner hot path    the same through the runner's path: LineSplitter -> TaskReporter.log() -> put_log()
                     plus the per-task log file
  put() status       updates/s of awaited put() calls, each one committed (and fsynced) before it returns

Nothing is drained: this measures the producer side only.  Target: >= 100,000 log lines/s.

    .venv/bin/python benchmarks/bench_queue.py [--lines 500000] [--puts 2000] [--dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from flamenco_deadline_worker.core.model import DeliveryResult, Head, Task, Update
from flamenco_deadline_worker.runner.process import LineSplitter
from flamenco_deadline_worker.runner.runner import TaskReporter
from flamenco_deadline_worker.upstream.queue import TaskUpdateQueue

TARGET_LINES_PER_S = 100_000


class NullSink:
    max_log_lines: int | None = None

    def batch_key(self, task_id: str) -> str:
        return task_id

    async def deliver(self, heads: Sequence[Head]) -> list[DeliveryResult]:
        return [DeliveryResult.ok(len(head.updates)) for head in heads]


async def new_queue(directory: Path, name: str) -> TaskUpdateQueue:
    queue = TaskUpdateQueue(directory / f"{name}.db", NullSink())
    await queue.open()
    return queue


async def bench_put_log(directory: Path, lines: int, chunk: int) -> float:
    queue = await new_queue(directory, "put-log")
    texts = [f"Fra:1 Mem:9.04M (Peak 10.83M) | Time:00:00.00 | line {i}\n" for i in range(chunk)]
    started = time.perf_counter()
    for _ in range(lines // chunk):
        for text in texts:
            queue.put_log("task-1", text)
        await asyncio.sleep(0)  # the pump's next read: lets timed commits run
    await queue.commit_logs()
    elapsed = time.perf_counter() - started
    backlog = await queue.backlog()
    await queue.close()
    assert backlog.count > 0
    return (lines // chunk * chunk) / elapsed


async def bench_hot_path(directory: Path, lines: int, chunk: int) -> float:
    queue = await new_queue(directory, "hot-path")
    task = Task(id="task-1", job_id="job-1", name="bench", job_type="simple", task_type="misc", commands=())
    reporter = TaskReporter(queue, task, directory / "task.log", activity_interval=1.0, on_output=None)
    splitter = LineSplitter(reporter.log)
    data = b"".join(f"Fra:1 Mem:9.04M (Peak 10.83M) | Time:00:00.00 | line {i}\n".encode() for i in range(chunk))
    started = time.perf_counter()
    for _ in range(lines // chunk):
        splitter.feed(data)
        await asyncio.sleep(0)
    splitter.close()
    await queue.commit_logs()
    elapsed = time.perf_counter() - started
    reporter.close()
    await queue.close()
    return (lines // chunk * chunk) / elapsed


async def bench_put(directory: Path, puts: int) -> tuple[float, float]:
    queue = await new_queue(directory, "put")
    latencies = []
    started = time.perf_counter()
    for i in range(puts):
        t0 = time.perf_counter()
        await queue.put(Update(task_id=f"task-{i % 4}", status="active", activity=f"step {i}", steps_completed=i))
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - started
    await queue.close()
    return puts / elapsed, statistics.median(latencies)


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-queue-", dir=args.dir) as tmp:
        directory = Path(tmp)
        put_log = await bench_put_log(directory, args.lines, args.chunk)
        hot = await bench_hot_path(directory, args.lines, args.chunk)
        put_rate, put_median = await bench_put(directory, args.puts)
    verdict = "meets" if put_log >= TARGET_LINES_PER_S else "MISSES"
    print(f"queue file under: {args.dir or tempfile.gettempdir()}")
    print(f"put_log          {put_log:12,.0f} lines/s  ({args.lines:,} lines in chunks of {args.chunk}; "
          f"{verdict} the {TARGET_LINES_PER_S:,}/s target)")
    print(f"runner hot path  {hot:12,.0f} lines/s  (LineSplitter -> TaskReporter.log -> put_log + task log file)")
    print(f"put() status     {put_rate:12,.0f} updates/s  (median {put_median * 1000:.2f} ms per committed put, "
          f"{args.puts:,} puts)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=500_000)
    parser.add_argument("--chunk", type=int, default=2_000, help="lines per event-loop turn")
    parser.add_argument("--puts", type=int, default=2_000)
    parser.add_argument("--dir", help="directory for the SQLite files (default: the temp directory)")
    asyncio.run(main(parser.parse_args()))
