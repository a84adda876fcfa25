"""Health monitoring (memory, swap, temperatures, power; the memory guard): base.py, proc.py, tegrastats.py,
jtop.py, select.py (which source), monitor.py (`HealthMonitor`)."""
