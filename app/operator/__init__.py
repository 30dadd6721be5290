"""Operator commands (`retry`, `close`, `prune`): the rules are in app/core/operator.py, the writes in app/store."""
