"""Lazaretto package."""
