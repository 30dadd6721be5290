"""Onboarding commands: check the configuration, register the GitHub App, enable the rule on environments."""
