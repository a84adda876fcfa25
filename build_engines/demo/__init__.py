"""The embedded demo, kept off the real build path: synthetic episodes in the robot's format (`episodes.py`), the
brief fit that makes the tiny policy respond to the image (`fit.py`), the RoboVLMs checkpoint writer it goes through
(`checkpoint_writer.py`), and where a checkpoint-less build's policy comes from (`policy.py`: the demo, or random
weights at a preset's shapes). `build_bundle` asks `policy.py` only when no checkpoint is given."""
