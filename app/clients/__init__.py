"""Outbound clients: GitHub (through githubkit) and Stacksona (httpx)."""
