"""The operator console: the tier map live, bars against targets, hold progress, the promotion log with its
evidence, overrides with actor, principal and reason, rejected input; operators pin, cap and move types from
it. Server-rendered (jinja2, autoescaped) with one small script for the live refresh (docs/embedded.md)."""

from __future__ import annotations

from .routes import mount

__all__ = ["mount"]
