from flamenco_deadline_worker.adaptor.entrypoint import EntryPoint
from flamenco_deadline_worker.adaptors.blender import ADAPTOR


def main() -> None:
    """Console-script entry: ``flamenco-blender-adaptor`` = this function."""
    EntryPoint(ADAPTOR, prog="python -m flamenco_deadline_worker.adaptors.blender").start()


if __name__ == "__main__":
    main()
