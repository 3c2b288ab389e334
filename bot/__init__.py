"""The running service: Slack wiring, terminal front end, adapters (Consul, nginx, probes), config, CLI."""
