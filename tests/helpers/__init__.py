"""Helpers the test modules share; no tests here, so trial collects nothing from this package."""
