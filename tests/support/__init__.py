"""Helpers shared by the test modules; no tests here, and test modules never import each other.

clock (FakeClock), keys (RSA keys and PEMs), http_mock (httpx doubles), payloads (webhook
deliveries), postgres (throwaway schemas), processes (the App as `python -m app` processes).
The end-to-end world stays in tests/world.py.
"""
