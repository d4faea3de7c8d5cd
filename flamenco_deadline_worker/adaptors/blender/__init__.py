"""The Blender adaptor: one warm Blender renders many frames.

    python -m flamenco_deadline_worker.adaptors.blender daemon start --connection-file F \
        --init-data '{"scene_file": "/shots/a.blend", "output_path": "/renders/a/frame_####"}'
    python -m flamenco_deadline_worker.adaptors.blender daemon run --connection-file F --run-data '{"frame": 12}'
    python -m flamenco_deadline_worker.adaptors.blender daemon stop --connection-file F

This package's ``__init__`` stays empty so that ``daemon run`` imports nothing of Blender's adaptor.
"""

ADAPTOR = "flamenco_deadline_worker.adaptors.blender.adaptor:BlenderAdaptor"
