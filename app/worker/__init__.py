"""The worker: the loop that claims due gates, the steps it runs, and periodic chores."""
