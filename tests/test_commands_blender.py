"""blender-render: output parsing, failures, and a real two-frame render through the worker and local manager."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers_commands import (
    BLENDER,
    cmd,
    command_json,
    harness,
    needs_blender,
    task_json,
    worker_output,
    worker_process,
)

from flamenco_deadline_worker.runner import process
from flamenco_deadline_worker.runner.commands.blender import BlenderOutput, BlenderRender
from flamenco_deadline_worker.runner.runner import Outcome
from flamenco_deadline_worker.testing.blender_scene import make_scene
from flamenco_deadline_worker.testing.manager import LocalManager

CYCLES_FAST = "import bpy; c = bpy.context.scene.cycles; c.samples = 4; c.use_denoising = False"


class RecordingReporter:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.activities: list[str] = []
        self.steps = 0
        self.outputs: list[str] = []

    def log(self, line: str) -> None:
        self.lines.append(line)

    def activity(self, text: str) -> None:
        self.activities.append(text)

    def step_done(self, count: int = 1) -> None:
        self.steps += count

    def output_produced(self, path: str) -> None:
        self.outputs.append(path)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Workbench scene (32x32, frames 1-2), made by Blender itself."""
    if BLENDER is None:
        pytest.skip("blender is not installed (Debian: apt-get install -y blender)")
    path = tmp_path_factory.mktemp("scene") / "scene.blend"
    make_scene(path, size=32, frames=(1, 2), blender=BLENDER)
    return path


def test_output_parsing() -> None:
    rep = RecordingReporter()
    out = BlenderOutput(rep)
    for line in [
        "Blender 3.4.1",
        "Read blend: /x/scene.blend",
        "EGL Error (0x3001): EGL_NOT_INITIALIZED: harmless",
        "Fra:1 Mem:9.04M (Peak 10.83M) | Time:00:00.00 | Mem:0.00M | Scene, ViewLayer | Synchronizing object | Cube",
        "Saved: '/out/f_0001.png'",
        " Time: 00:00.30 (Saving: 00:00.13)",
        "skipping existing frame \"/out/f_0002.png\"",
        "Saved: '/out/it''s.png'",
    ]:
        out(line)
    assert rep.steps == 2
    assert rep.outputs == ["/out/f_0001.png", "/out/it''s.png"]
    assert rep.activities[0].startswith("Fra:1 Mem:9.04M")
    assert "Fra:1 saved /out/f_0001.png" in rep.activities
    assert "Fra:1 frame finished in 00:00.30" in rep.activities
    assert out.failure_reason() is None


def test_python_error_is_the_failure_reason() -> None:
    out = BlenderOutput(RecordingReporter())
    for line in [
        "Error: Python: Traceback (most recent call last):",
        '  File "<string>", line 1, in <module>',
        "ValueError: boom here",
        "",
        "Error: script failed, expr: 'raise ValueError', exiting.",
    ]:
        out(line)
    assert out.failure_reason() == "ValueError: boom here"
    other = BlenderOutput(RecordingReporter())
    other("Error: Cannot read file '/x.blend': No such file or directory")
    assert other.failure_reason() == "Error: Cannot read file '/x.blend': No such file or directory"


def test_argument_order_matches_flamenco() -> None:
    params = BlenderRender.validate({
        "exe": "sh", "exeArgs": "-b -y", "argsBefore": ["--factory-startup"],
        "blendfile": "/s/scene.blend", "args": ["--render-frame", "1..2"],
    })
    argv = BlenderRender.command_line(params)
    assert argv[1:] == ["-b", "-y", "--factory-startup", "/s/scene.blend", "--render-frame", "1..2"]
    no_file = BlenderRender.command_line(BlenderRender.validate({"exe": "sh", "args": ["--python", "/x.py"]}))
    assert no_file[1:] == ["--python", "/x.py"]


async def test_refusals(tmp_path: Path) -> None:
    async with harness(tmp_path / "home") as h:
        missing_file = await h.run(cmd("blender-render", exe="sh", blendfile=str(tmp_path / "nope.blend")))
        missing_exe = await h.run(cmd("blender-render", exe="no-such-blender-here", blendfile=""))
        bad_args = await h.run(cmd("blender-render", exe="sh", args="-f 1"))
        bad_exe_args = await h.run(cmd("blender-render", exe="sh", exeArgs="-b 'unclosed"))
    assert "parameter 'blendfile'" in missing_file.final_activity and "does not exist" in missing_file.final_activity
    assert "parameter 'exe'" in missing_exe.final_activity and "no-such-blender-here" in missing_exe.final_activity
    assert "parameter 'args' must be list" in bad_args.final_activity
    assert "parameter 'exeArgs' cannot be split" in bad_exe_args.final_activity
    for run in (missing_file, missing_exe, bad_args, bad_exe_args):
        assert run.outcome is Outcome.FAILED


@pytest.mark.blender
@needs_blender
async def test_real_blender_output_drives_steps_and_outputs(scene: Path, tmp_path: Path) -> None:
    rep = RecordingReporter()
    parser = BlenderOutput(rep)
    params = BlenderRender.validate({
        "exe": "blender", "exeArgs": "-b -y", "blendfile": str(scene),
        # Cycles (4 samples) rather than Workbench: only Cycles and EEVEE print the `Fra:` progress lines.
        # Debian builds Blender without OpenImageDenoise, hence no denoising.
        "args": ["--engine", "CYCLES", "--python-expr", CYCLES_FAST,
                 "--render-output", str(tmp_path / "f_####"), "--render-format", "PNG", "--render-frame", "1..2"],
    })

    def on_line(line: str) -> None:
        rep.log(line)
        parser(line)

    code = await process.run_process(BlenderRender.command_line(params), on_line, cwd=tmp_path)
    assert code == 0, "\n".join(rep.lines[-40:])
    assert rep.steps == 2
    assert rep.outputs == [str(tmp_path / "f_0001.png"), str(tmp_path / "f_0002.png")]
    assert any(a.startswith("Fra:2 ") for a in rep.activities), rep.activities
    assert f"Fra:2 saved {tmp_path / 'f_0002.png'}" in rep.activities


@pytest.mark.blender
@needs_blender
async def test_python_error_with_exit_code_fails_the_task(scene: Path, tmp_path: Path) -> None:
    async with harness(tmp_path / "home") as h:
        run = await h.run(cmd(
            "blender-render", exe="blender", exeArgs="-b -y", blendfile=str(scene),
            args=["--python-exit-code", "3", "--python-expr", "raise ValueError('boom from the test')",
                  "--render-output", str(tmp_path / "f_####"), "--render-frame", "1"],
        ))
    assert run.outcome is Outcome.FAILED
    assert "Blender exited with code 3: ValueError: boom from the test" in run.final_activity, run.final_activity
    assert not (tmp_path / "f_0001.png").exists()


@pytest.mark.blender
@needs_blender
async def test_two_frame_render_through_worker_and_manager(scene: Path, tmp_path: Path) -> None:
    frames = tmp_path / "frames"
    render = command_json(
        "blender-render", steps=2,
        exe="blender", exeArgs="-b -y", argsBefore=[], blendfile=str(scene),
        args=["--render-output", str(frames / "frame_####"), "--render-format", "PNG", "--render-frame", "1..2"],
    )
    manager = LocalManager(seed=5)
    await manager.start()
    try:
        job = manager.submit_job("render", [task_json("render 1-2", "blender", render)])
        task_id = manager.job(job).task_ids[0]
        async with worker_process(manager.url, tmp_path / "home"):
            try:
                await manager.wait_for(lambda: manager.task(task_id).status in ("completed", "failed"), 240)
                # The preview upload runs beside the render and may land just after the final status.
                await manager.wait_for(lambda: manager.task(task_id).previews_received >= 1, 60)
            except TimeoutError as exc:
                raise AssertionError(f"{exc}\nworker output:\n{worker_output(tmp_path / 'home')}") from None
        task = manager.task(task_id)
        assert task.status == "completed", task.log[-3000:]
        assert task.steps_completed == 2
        assert sorted(p.name for p in frames.iterdir()) == ["frame_0001.png", "frame_0002.png"]
        assert all((frames / n).read_bytes().startswith(b"\x89PNG") for n in ("frame_0001.png", "frame_0002.png"))
        assert task.preview is not None and task.preview.content_type == "image/png"
        assert "Saved: '" in task.log and task.log.count("Time: ") >= 2
        steps_seen = [u.steps_completed for u in task.updates if u.steps_completed]
        assert steps_seen == sorted(steps_seen), "steps_completed only goes up"
    finally:
        await manager.stop()
