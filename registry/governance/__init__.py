"""What a team's registry promises beyond the distribution API: quotas per namespace, retention
policies, immutable tags, a durable audit log and batched pull statistics.

Each module has one job; ``policy`` reads their configuration, and the handlers and the web UI
reach them through ``registry.routes.services.Services.governance``.
"""
