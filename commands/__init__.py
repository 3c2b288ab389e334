"""What each command does, with no Slack and no network client inside.

A front end parses chat or shell text with `grammar.parse`, hands the typed request to
`service.CommandService`, and renders the events it emits.
"""
