"""Calibration data from the robot's HDF5 episodes for INT8 quantization (issue 3). Imports `runtime`, never the
reverse."""
