"""Helpers shared by the test modules (fakes, HTTP doubles, keys); no tests here."""
