"""Tests of `bertforge serve` (a package: its conftest is `serve.conftest`, apart from the top one)."""
