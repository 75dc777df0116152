"""Test support for the agent (fake NVML sources, recorders, capture parsers); not in the wheel."""
