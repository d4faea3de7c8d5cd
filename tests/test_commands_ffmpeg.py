"""frames-to-video with the real FFmpeg: generated PNG frames become a video ffprobe reads back."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from helpers_commands import FFMPEG, FFPROBE, cmd, harness, needs_ffmpeg

from flamenco_deadline_worker.runner.commands.ffmpeg import FramesToVideo, format_fps
from flamenco_deadline_worker.runner.runner import Outcome

FRAMES = 12


@pytest.fixture
def frames(tmp_path: Path) -> Path:
    """FRAMES numbered 64x48 PNG frames, made by FFmpeg's test source."""
    if FFMPEG is None:
        pytest.skip("ffmpeg is not installed (Debian: apt-get install -y ffmpeg)")
    folder = tmp_path / "frames"
    folder.mkdir()
    subprocess.run(
        [FFMPEG, "-v", "error", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=24", "-frames:v", str(FRAMES),
         str(folder / "frame_%04d.png")],
        check=True, capture_output=True, timeout=120,
    )
    assert len(list(folder.glob("*.png"))) == FRAMES
    return folder


def probe(video: Path) -> tuple[int, str]:
    assert FFPROBE is not None
    out = subprocess.run(
        [FFPROBE, "-v", "error", "-count_frames", "-select_streams", "v:0",
         "-show_entries", "stream=nb_read_frames,r_frame_rate", "-of", "default=noprint_wrappers=1", str(video)],
        check=True, capture_output=True, text=True, timeout=120,
    ).stdout
    fields = dict(line.split("=", 1) for line in out.split())
    return int(fields["nb_read_frames"]), fields["r_frame_rate"]


@pytest.mark.blender
@needs_ffmpeg
async def test_frames_to_video(frames: Path, tmp_path: Path) -> None:
    video = tmp_path / "out.mp4"
    async with harness(tmp_path / "home") as h:
        run = await h.run(cmd(
            "frames-to-video",
            exe="ffmpeg", exeArgs="-v info -hide_banner", fps=24, inputGlob=str(frames / "*.png"),
            outputFile=str(video), argsBefore=[],
            args=["-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "23", "-y"],
        ))
    assert run.outcome is Outcome.COMPLETED, run.log[-3000:]
    assert f"{FRAMES} file(s) match" in run.log
    count, rate = probe(video)
    assert count == FRAMES
    assert rate == "24/1"


@pytest.mark.blender
@needs_ffmpeg
async def test_ffmpeg_failure_fails_the_task(frames: Path, tmp_path: Path) -> None:
    async with harness(tmp_path / "home") as h:
        run = await h.run(cmd(
            "frames-to-video", exe="ffmpeg", fps=24, inputGlob=str(frames / "*.png"),
            outputFile=str(tmp_path / "out.mp4"), args=["-c:v", "no-such-codec"],
        ))
    assert run.outcome is Outcome.FAILED
    assert "FFmpeg exited with code 1: Unknown encoder 'no-such-codec'" in run.final_activity, run.final_activity


def test_argument_order_matches_flamenco() -> None:
    params = FramesToVideo.validate({
        "exe": "sh", "exeArgs": "-hide_banner", "fps": 23.976, "inputGlob": "/r/*.png",
        "outputFile": "/r/v.mp4", "argsBefore": ["-y"], "args": ["-c:v", "libx264"],
    })
    assert FramesToVideo.command_line(params)[1:] == [
        "-hide_banner", "-y", "-r", "23.976", "-pattern_type", "glob", "-i", "/r/*.png",
        "-c:v", "libx264", "-r", "23.976", "/r/v.mp4",
    ]
    assert format_fps(24) == "24" and format_fps(24.0) == "24" and format_fps(29.97) == "29.97"


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"fps": 0}, "parameter 'fps' must be a number greater than 0"),
        ({"fps": "24"}, "parameter 'fps' must be integer or number"),
        ({"fps": True}, "parameter 'fps' must be integer or number"),
        ({"inputGlob": "frames/*.png"}, "parameter 'inputGlob' must be an absolute path"),
        ({"outputFile": ""}, "parameter 'outputFile' must not be empty"),
        ({"inputGlob": "/no/such/dir/*.png"}, "parameter 'inputGlob': no files match"),
        ({"outputFile": "/no/such/dir/v.mp4"}, "parameter 'outputFile': directory '/no/such/dir' does not exist"),
        ({"exe": ""}, "parameter 'exe' must not be empty"),
    ],
)
async def test_refusals(tmp_path: Path, params: dict[str, object], expected: str) -> None:
    (tmp_path / "f_0001.png").write_bytes(b"\x89PNG")
    full = {"exe": "sh", "fps": 24, "inputGlob": str(tmp_path / "*.png"), "outputFile": str(tmp_path / "v.mp4")}
    full.update(params)
    async with harness(tmp_path / "home") as h:
        run = await h.run(cmd("frames-to-video", **full))
    assert run.outcome is Outcome.FAILED
    assert expected in run.final_activity, run.final_activity
