"""The Consul adapters: KV store (upstreams), release lock, audit history."""
