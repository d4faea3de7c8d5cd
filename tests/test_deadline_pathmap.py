"""Path mapping: the job's storage-profile rules from jobDetails into the OpenJD session.

Unit tests of the parsing and of the emulator's rules, then the real agent against the emulator:
a PATH task parameter and a PATH job parameter arrive mapped, Windows sources onto this host's paths.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

pytest.importorskip("boto3")
pytest.importorskip("openjd.sessions")
from deadline_agent import Start  # noqa: E402

from flamenco_deadline_worker.backends.deadline import pathmap  # noqa: E402
from flamenco_deadline_worker.testing.deadline_emulator import Options  # noqa: E402
from flamenco_deadline_worker.testing.deadline_emulator.profiles import (  # noqa: E402
    StorageProfile,
    path_mapping_rules,
)

WINDOWS_RULE = {"sourcePathFormat": "windows", "sourcePath": "Z:\\projects", "destinationPath": "/mnt/projects"}
POSIX_RULE = {"sourcePathFormat": "posix", "sourcePath": "/home/artist/projects", "destinationPath": "/mnt/projects"}


# ---- parsing and applying ------------------------------------------------------------------------


def test_rules_map_windows_and_posix_sources_onto_this_hosts_paths() -> None:
    rules = pathmap.rules_of({"pathMappingRules": [WINDOWS_RULE, POSIX_RULE]})
    assert pathmap.map_path(rules, "Z:\\projects\\shot1\\scene.blend") == "/mnt/projects/shot1/scene.blend"
    assert pathmap.map_path(rules, "z:\\PROJECTS\\a.exr") == "/mnt/projects/a.exr", "Windows matches any case"
    assert pathmap.map_path(rules, "/home/artist/projects/x/y.exr") == "/mnt/projects/x/y.exr"
    assert pathmap.map_path(rules, "/home/artist/projectsX/y.exr") == "/home/artist/projectsX/y.exr"
    assert pathmap.map_path(rules, "/elsewhere/z.exr") == "/elsewhere/z.exr"
    assert pathmap.as_dicts(rules) == [
        {"source_path_format": "WINDOWS", "source_path": "Z:\\projects", "destination_path": "/mnt/projects"},
        {"source_path_format": "POSIX", "source_path": "/home/artist/projects", "destination_path": "/mnt/projects"},
    ]
    assert pathmap.source_to_destination(rules) == {
        "Z:\\projects": "/mnt/projects", "/home/artist/projects": "/mnt/projects"}


def test_the_most_specific_rule_wins_whatever_the_order() -> None:
    rules = pathmap.rules_of({"pathMappingRules": [
        {"sourcePathFormat": "posix", "sourcePath": "/p", "destinationPath": "/a"},
        {"sourcePathFormat": "posix", "sourcePath": "/p/renders", "destinationPath": "/b"},
    ]})
    assert pathmap.map_path(rules, "/p/renders/1.exr") == "/b/1.exr"
    assert pathmap.map_path(rules, "/p/scenes/1.blend") == "/a/scenes/1.blend"


def test_no_rules_and_bad_rules() -> None:
    assert pathmap.rules_of({}) == []
    assert pathmap.rules_of({"pathMappingRules": []}) == []
    with pytest.raises(pathmap.PathMappingError, match=r"pathMappingRules\[0\].sourcePathFormat is 'amiga'"):
        pathmap.rules_of({"pathMappingRules": [{**POSIX_RULE, "sourcePathFormat": "amiga"}]})
    with pytest.raises(pathmap.PathMappingError, match=r"pathMappingRules\[1\] lacks destinationPath"):
        pathmap.rules_of({"pathMappingRules": [POSIX_RULE, {"sourcePathFormat": "posix", "sourcePath": "/x"}]})


def test_the_emulator_derives_rules_from_the_two_storage_profiles() -> None:
    workstation = StorageProfile("WINDOWS", {"Projects": "Z:\\projects", "Textures": "T:\\", "Home": "C:\\Users\\a"})
    fleet = StorageProfile("LINUX", {"Projects": "/mnt/projects", "Textures": "/mnt/textures"})
    assert path_mapping_rules(workstation, fleet) == [
        {"sourcePathFormat": "windows", "sourcePath": "Z:\\projects", "destinationPath": "/mnt/projects"},
        {"sourcePathFormat": "windows", "sourcePath": "T:\\", "destinationPath": "/mnt/textures"},
    ]
    mac = StorageProfile("MACOS", {"Projects": "/Volumes/projects"})
    assert path_mapping_rules(mac, fleet)[0]["sourcePathFormat"] == "posix"
    assert path_mapping_rules(None, fleet) == [], "a job without a storage profile"
    assert path_mapping_rules(fleet, fleet) == [], "submitted with the fleet's own profile"
    with pytest.raises(ValueError, match="os_family 'BEOS'"):
        StorageProfile("BEOS", {})


# ---- end to end ----------------------------------------------------------------------------------


def mapped_job() -> dict[str, Any]:
    printer = (
        "import sys; print('FILE=' + sys.argv[1]); print('SCENE=' + sys.argv[2]); "
        "print('RULES=' + open(sys.argv[3]).read().replace(chr(10), ' '))"
    )
    return {
        "specificationVersion": "jobtemplate-2023-09",
        "name": "Mapped",
            "parameterDefinitions": [{"name": "Scene", "type": "PATH"}],
        "steps": [{
            "name": "Render",
            "parameterSpace": {"taskParameterDefinitions": [{
                "name": "File", "type": "PATH",
                "range": [
                    "Z:\\projects\\shot1\\frame_0001.exr", "/home/artist/projects/shot1/f2.exr", "/srv/other/f3.exr",
                ],
            }]},
            "script": {"actions": {"onRun": {"command": "python3", "args": [
                "-c", printer, "{{Task.Param.File}}", "{{Param.Scene}}", "{{Session.PathMappingRulesFile}}",
            ]}}},
        }],
    }


# A job PATH parameter is made absolute where the job is submitted (here: on a POSIX workstation).
SCENE = {"Scene": "/home/artist/projects/shot1/a.blend"}


def session_log(emu: Any) -> str:
    session = emu.read(lambda s: next(iter(s.sessions.values())))
    return str(emu.read(lambda s: s.log_text(emu.state.job.log_group, session.id)))


def test_a_jobs_paths_are_mapped_from_windows_and_posix_sources(run: Start) -> None:
    fleet = StorageProfile("LINUX", {"Projects": "/mnt/projects"})
    # A job from a Windows workstation: only Windows paths under the shared location are mapped.
    job_profile = StorageProfile("WINDOWS", {"Projects": "Z:\\projects"})
    options = Options(update_interval_seconds=2, job_storage_profile=job_profile, fleet_storage_profile=fleet)
    emu, agent = run(mapped_job(), options=options, parameters=SCENE)
    agent.until(lambda s: s.task_statuses() and all(v == "SUCCEEDED" for v in s.task_statuses().values()),
                180, "3 tasks SUCCEEDED")
    agent.until(lambda s: "FILE=/srv/other/f3.exr" in session_log(emu), 60, "the session log")
    log = session_log(emu)
    assert "FILE=/mnt/projects/shot1/frame_0001.exr" in log, log[-3000:]
    assert "FILE=/home/artist/projects/shot1/f2.exr" in log, "no POSIX rule for this job: unchanged"
    assert "FILE=/srv/other/f3.exr" in log, "outside every rule: unchanged"
    assert "SCENE=/home/artist/projects/shot1/a.blend" in log
    assert "Path mapping rule: windows Z:\\projects -> /mnt/projects" in log
    rules_line = next(line for line in log.splitlines() if line.startswith("RULES="))
    assert json.loads(rules_line[len("RULES="):])["path_mapping_rules"] == [
        {"source_path_format": "WINDOWS", "source_path": "Z:\\projects", "destination_path": "/mnt/projects"}]
    assert emu.read(lambda s: list(s.violations)) == []


def test_posix_sources_map_too_job_parameters_included(run: Start) -> None:
    fleet = StorageProfile("LINUX", {"Projects": "/mnt/projects", "Other": "/srv/other"})
    job_profile = StorageProfile("MACOS", {"Projects": "/home/artist/projects"})
    options = Options(update_interval_seconds=2, job_storage_profile=job_profile, fleet_storage_profile=fleet)
    emu, agent = run(mapped_job(), options=options, parameters=SCENE)
    agent.until(lambda s: s.task_statuses() and all(v == "SUCCEEDED" for v in s.task_statuses().values()),
                180, "3 tasks SUCCEEDED")
    agent.until(lambda s: "FILE=/srv/other/f3.exr" in session_log(emu), 60, "the session log")
    log = session_log(emu)
    assert "FILE=/mnt/projects/shot1/f2.exr" in log, log[-3000:]
    assert "SCENE=/mnt/projects/shot1/a.blend" in log, "a job PATH parameter is mapped as well"
    assert "FILE=Z:\\projects\\shot1\\frame_0001.exr" in log, "a Windows path: no POSIX rule applies"
    assert "Path mapping rule: posix /home/artist/projects -> /mnt/projects" in log


def test_a_job_without_rules_runs_its_paths_as_given(run: Start) -> None:
    emu, agent = run(mapped_job(), parameters=SCENE)
    agent.until(lambda s: s.task_statuses() and all(v == "SUCCEEDED" for v in s.task_statuses().values()),
                180, "3 tasks SUCCEEDED")
    agent.until(lambda s: "FILE=/srv/other/f3.exr" in session_log(emu), 60, "the session log")
    log = session_log(emu)
    assert "FILE=/home/artist/projects/shot1/f2.exr" in log
    assert "Path mapping rule" not in log
