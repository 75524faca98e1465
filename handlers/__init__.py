"""Service-task handlers: the after-sales knowledge. ``build_registry`` hands them to the engine."""

from __future__ import annotations

from typing import Any

from engine import HandlerRegistry


def build_registry() -> HandlerRegistry:
    registry = HandlerRegistry()
    from . import surveys

    surveys.register(registry)
    register_domain(registry)
    return registry


def register_domain(registry: HandlerRegistry) -> None:
    """The service tasks of the five procedures (handler names as the diagrams call them)."""
    from . import (
        compensation,
        customers,
        emergency,
        faq,
        invoices,
        links,
        notifications,
        parts,
        references,
        technicians,
    )

    registry.register("case.assign_reference", references.assign_reference)
    registry.register("case.link", links.link)
    registry.register("customer.find_or_create", customers.find_or_create)
    registry.register("faq.auto_reply", faq.auto_reply)
    registry.register("technician.assign", technicians.assign)
    registry.register("technician.check_manual_assignment", technicians.check_manual_assignment)
    registry.register("parts.reserve", parts.reserve)
    registry.register("parts.consume", parts.consume)
    registry.register("parts.release", parts.release)
    registry.register("procurement.request", parts.request_procurement)
    registry.register("stock.check", parts.check_stock)
    registry.register("notify.customer", notifications.notify_customer)
    registry.register("notify.group", notifications.notify_group)
    registry.register("compensation.record", compensation.record)
    registry.register("invoice.record", invoices.record)
    registry.register("emergency.find_affected", emergency.find_affected)


def install_hooks(engine: Any) -> None:
    """Engine hooks the handlers need: linked cases start right after the command that links them."""
    from . import links

    links.install(engine)
