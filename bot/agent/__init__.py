"""`upstream-bot agent`: runs the steps named in its own config on a node, for signed requests."""
