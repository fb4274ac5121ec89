"""Spillover: multilingual news monitoring for Middle East escalation signals."""

__version__ = "0.1.0"
