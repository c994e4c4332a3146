"""Serving: the OpenAI-compatible HTTP API and chat page (`server`), request checks (`api`), continuous
batching of many generations (`batching`) and text deltas from tokens (`replies`)."""
