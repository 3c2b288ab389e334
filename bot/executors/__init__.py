"""Executors: run an app's configured release steps on its nodes (SSH, node agent, or locally)."""
