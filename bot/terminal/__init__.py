"""The terminal front end: the demo prompt and `upstream-bot run`, rendering events as lines."""
