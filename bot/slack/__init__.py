"""The Slack front end: Bolt wiring, handlers, Block Kit rendering, progress messages, serve."""
