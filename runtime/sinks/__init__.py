"""Velocity command sinks (docs/design.md §3): base.py (the command, the Sink protocol), formats.py (JSON, the
serial line), one module per kind (stdout, udp, serial, ros2), dispatch.py (`open_sink`), fanout.py (`SinkSet`)."""
