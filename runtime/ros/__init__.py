"""ROS 2 conventions the runtime follows whichever way it reaches ROS (rclpy or Cyclone DDS): node and topic names
with namespace and remapping (`names.py`), and the `--ros-args` a ROS node takes (`args.py`)."""
