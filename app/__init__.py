"""Stacksona Deployment Gate: a GitHub App custom deployment protection rule."""

__version__ = "0.1.0"
