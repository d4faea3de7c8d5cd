"""Command line of the sample adaptors; SAMPLE_ADAPTOR picks the class (Noop, Sleep, Echo, Process, Cooperative)."""

import os

from flamenco_deadline_worker.adaptor.entrypoint import EntryPoint

if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    name = os.environ.get("SAMPLE_ADAPTOR", "Noop")
    EntryPoint(f"{here}/sample_adaptors.py:{name}Adaptor", prog="sample").start()
