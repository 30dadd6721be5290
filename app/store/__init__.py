"""Persistence: the engine, the schema and its migrations, the gate queue, deliveries and periodic chores."""
