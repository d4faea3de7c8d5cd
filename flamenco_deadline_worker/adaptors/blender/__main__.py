from flamenco_deadline_worker.adaptor.entrypoint import EntryPoint
from flamenco_deadline_worker.adaptors.blender import ADAPTOR

if __name__ == "__main__":
    EntryPoint(ADAPTOR, prog="python -m flamenco_deadline_worker.adaptors.blender").start()
