"""ROS 2 without a ROS install: DDS through Cyclone DDS's Python binding (`pip install ".[dds]"`), speaking ROS 2's
topic and type names so that unmodified ROS 2 nodes (rmw_cyclonedds or rmw_fastrtps, same domain id) exchange
messages with it. `messages.py`: the ROS 2 message types as DDS types; `participant.py`: domain, topic names, QoS."""
