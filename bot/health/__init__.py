"""Health: HTTP probes of the nodes and the scheduled health watch."""
