"""Stand-ins for the services this machine cannot reach: Consul's HTTP API and Slack's Web API.

Written from the services' API docs; the bot talks to them only over HTTP, through the same
adapters that talk to the real services.
"""
