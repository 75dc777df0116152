"""hwprobe: the monitoring agent of the fleet dashboard (standard library + psutil + pynvml)."""

__version__ = "0.1.0"
