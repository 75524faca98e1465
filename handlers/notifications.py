"""Notifications to customers and staff groups, written to the outbox in the command's own
transaction (a dispatcher delivers them later). Every text is rendered in Simplified Chinese
with the English beside it."""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select

from engine import ServiceContext
from engine.models import Membership, User

from .models import Customer
from .references import CHINA

log = logging.getLogger("aftercare.notifications")

# (subject zh, body zh, subject en, body en); keys are (template, audience).
TEMPLATES: dict[tuple[str, str], tuple[str, str, str, str]] = {
    ("inquiry_auto_reply", "customer"): (
        "【{case_ref}】您的咨询答复",
        "您好！关于您的咨询“{question}”，答复如下：\n{answer}\n如问题已解决，请回复“已解决”；如仍有疑问，请直接回复，"
        "客服将尽快与您联系。",
        "[{case_ref}] Answer to your inquiry",
        "Hello! About your question \"{question}\":\n{answer}\nIf this solves it, reply \"resolved\"; otherwise just "
        "reply and an agent will contact you shortly."),
    ("inquiry_expected_wait", "customer"): (
        "【{case_ref}】您的咨询正在处理",
        "您好！您的咨询（编号 {case_ref}）需要进一步查询核实，我们将在 {expected_reply_at} 前回复您，请耐心等待。",
        "[{case_ref}] We are looking into your inquiry",
        "Hello! Your inquiry ({case_ref}) needs a look-up; we will reply by {expected_reply_at}. Thank you for your "
        "patience."),
    ("inquiry_follow_up_due", "staff"): (
        "咨询 {case_ref} 已到约定回复时间",
        "咨询 {case_ref} 已到向客户承诺的回复时间（{expected_reply_at}），请尽快回复客户。",
        "Inquiry {case_ref}: promised reply time reached",
        "The reply promised to the customer for inquiry {case_ref} was due at {expected_reply_at}; please reply now."),
    ("order_rejected", "customer"): (
        "【{case_ref}】订单 {order_no} 审核未通过",
        "您好！您的订单 {order_no}（编号 {case_ref}）未能通过审核，原因：{reason}。客服将与您联系处理。",
        "[{case_ref}] Order {order_no} could not be accepted",
        "Hello! Your order {order_no} ({case_ref}) could not be accepted: {reason}. An agent will contact you."),
    ("delivery_date", "customer"): (
        "【{case_ref}】订单 {order_no} 预计交货日期",
        "您好！您订购的部分商品暂时缺货，我们已安排补货，预计 {expected_date} 到货，到货后将与您约定配送时间。"
        "（订单 {order_no}，编号 {case_ref}）",
        "[{case_ref}] Expected delivery date for order {order_no}",
        "Hello! Part of your order is out of stock and has been reordered; we expect it on {expected_date} and will "
        "then agree a delivery time with you. (Order {order_no}, {case_ref})"),
    ("emergency_activated", "staff"): (
        "应急预案启动：{incident_title}",
        "应急预案已启动（{case_ref}）：{incident_title}。类型：{plan_type}；级别：{severity_level}；协调人：{coordinator}。"
        "请按预案立即响应。",
        "Emergency plan activated: {incident_title}",
        "Emergency plan activated ({case_ref}): {incident_title}. Type: {plan_type}; level: {severity_level}; "
        "coordinator: {coordinator}. Respond as the plan says."),
    ("emergency_notice", "customer"): (
        "【重要通知】{incident_title}",
        "尊敬的客户：关于“{incident_title}”，{message}\n如有疑问，请拨打24小时服务热线。（编号 {case_ref}）",
        "[Important] {incident_title}",
        "Dear customer, about \"{incident_title}\": {message}\nQuestions? Call our 24-hour service hotline. "
        "({case_ref})"),
    ("emergency_progress", "customer"): (
        "【处理进展】{incident_title}",
        "尊敬的客户：关于“{incident_title}”（编号 {case_ref}），我们正在全力处理，有新进展将第一时间通知您。",
        "[Progress] {incident_title}",
        "Dear customer, we are working on \"{incident_title}\" ({case_ref}) and will tell you as soon as there is "
        "news."),
    ("emergency_progress", "staff"): (
        "应急通报：{incident_title}",
        "应急事件 {case_ref}（{incident_title}）定期通报时间已到，已向受影响客户发送进展通知。协调人：{coordinator}。",
        "Emergency update: {incident_title}",
        "Scheduled update for emergency {case_ref} ({incident_title}): affected customers have been sent a progress "
        "notice. Coordinator: {coordinator}."),
    ("emergency_closed", "customer"): (
        "【处理完毕】{incident_title}",
        "尊敬的客户：关于“{incident_title}”（编号 {case_ref}）的事件已处理完毕。{summary}\n感谢您的理解与支持。",
        "[Resolved] {incident_title}",
        "Dear customer, the incident \"{incident_title}\" ({case_ref}) has been resolved. {summary}\n"
        "Thank you for your understanding."),
}
GENERIC = (
    "【{case_ref}】服务通知", "您好！您有一条关于 {case_ref} 的服务通知。{details}",
    "[{case_ref}] Service notice", "Hello! There is a service notice about {case_ref}. {details}",
)
STAFF_CHANNEL = "staff"
_ISO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}")


class _Context(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return ""


def _show(value: Any) -> str:
    """Times in China time, lists joined; nothing that looks like Python's repr."""
    if value is None:
        return ""
    if isinstance(value, str) and _ISO_TIME.match(value):
        try:
            moment = dt.datetime.fromisoformat(value)
            if moment.tzinfo is not None:
                moment = moment.astimezone(CHINA)
            return moment.strftime("%Y-%m-%d %H:%M")
        except ValueError:
            return value
    if isinstance(value, list | tuple):
        return "、".join(_show(v) for v in value)
    if isinstance(value, dict):
        return "，".join(f"{k}: {_show(v)}" for k, v in value.items())
    return str(value)


def render(template: str, context: Mapping[str, Any], audience: str = "customer") -> tuple[str, str]:
    """(subject, body) with Chinese first and English beside it."""
    texts = TEMPLATES.get((template, audience)) or TEMPLATES.get((template, "customer")) \
        or TEMPLATES.get((template, "staff"))
    values = _Context({k: _show(v) for k, v in (context or {}).items()})
    if texts is None:
        log.warning("no notification template '%s' (%s); sending the generic notice", template, audience)
        texts = GENERIC
        values["details"] = _show({k: v for k, v in (context or {}).items() if k != "case_ref"})
    subject_zh, body_zh, subject_en, body_en = (t.format_map(values) for t in texts)
    return f"{subject_zh} / {subject_en}", f"{body_zh}\n\n{body_en}"


def _route(customer: Customer, requested: str) -> tuple[str, str] | None:
    """(outbox channel, recipient): e-mail when the customer wrote by e-mail, else SMS."""
    if requested == "email" and customer.email:
        return "email", customer.email
    if customer.phone:
        return "sms", customer.phone
    if customer.email:
        return "email", customer.email
    return None


def _customer_ids(customer_id: Any, customers: Any) -> list[int]:
    raw: list[Any] = []
    if isinstance(customers, Mapping):
        raw.extend(v.get("customer_id", k) if isinstance(v, Mapping) else k for k, v in customers.items())
    elif isinstance(customers, list | tuple):
        raw.extend(c.get("customer_id") if isinstance(c, Mapping) else c for c in customers)
    if customer_id not in (None, ""):
        raw.append(customer_id)
    ids = []
    for value in raw:
        try:
            ids.append(int(value))
        except (TypeError, ValueError):
            log.warning("not a customer id: %r", value)
    return list(dict.fromkeys(ids))


def notify_customer(ctx: ServiceContext, template: str = "", customer_id: Any = None, customers: Any = None,
                    channel: str = "", context: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``notify.customer``: one outbox row per customer (``customer_id`` or ``customers``)."""
    ids = _customer_ids(customer_id, customers)
    context = dict(context or {})
    context.setdefault("case_ref", ctx.data.get("case_ref", ""))
    subject, body = render(template, context, "customer")
    sent, skipped, channels = 0, [], set()
    rows = {c.id: c for c in ctx.session.scalars(select(Customer).where(Customer.id.in_(ids)))} if ids else {}
    for cid in ids:
        customer = rows.get(cid)
        route = _route(customer, str(channel or "")) if customer is not None else None
        if route is None:
            skipped.append(cid)
            continue
        ctx.notify(route[0], route[1], body, subject=subject, template=template,
                   payload={"customer_id": cid, "requested_channel": channel or None, "context": context})
        channels.add(route[0])
        sent += 1
    if skipped:
        log.warning("case %s: no contact for customers %s (template %s)", ctx.case_id, skipped, template)
    return {"sent": sent, "skipped": len(skipped), "channel": ",".join(sorted(channels)), "template": template}


def group_members(session: Any, group: str) -> list[str]:
    return list(session.scalars(select(User.username).join(Membership, Membership.user_id == User.id)
                                .where(Membership.group_name == group, User.active.is_(True))
                                .order_by(User.username)))


def notify_group(ctx: ServiceContext, group: str = "", template: str = "",
                 context: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``notify.group``: one staff notice per active member of the group."""
    context = dict(context or {})
    context.setdefault("case_ref", ctx.data.get("case_ref", ""))
    subject, body = render(template, context, "staff")
    members = group_members(ctx.session, group)
    for username in members:
        ctx.notify(STAFF_CHANNEL, username, body, subject=subject, template=template,
                   payload={"group": group, "context": context})
    if not members:
        log.warning("case %s: group '%s' has no active members; notice %s not sent", ctx.case_id, group, template)
    return {"sent": len(members), "group": group, "recipients": members, "template": template}
