"""Service-task handlers: the after-sales knowledge. ``build_registry`` hands them to the engine."""

from __future__ import annotations

from engine import HandlerRegistry


def build_registry() -> HandlerRegistry:
    registry = HandlerRegistry()
    from . import surveys

    surveys.register(registry)
    return registry
