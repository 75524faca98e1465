"""Affected-customer search for an emergency plan: by product model, batch and region."""

from __future__ import annotations

from typing import Any

from sqlalchemy import or_, select

from engine import InvalidInput, ServiceContext

from .customers import mask_phone
from .models import Customer, CustomerProduct


def _clean(values: Any) -> list[str]:
    if values in (None, ""):
        return []
    if isinstance(values, str):
        values = [values]
    return sorted({str(v).strip() for v in values if str(v).strip()})


def find_affected(ctx: ServiceContext, plan_type: str = "", product_models: Any = None, batches: Any = None,
                  regions: Any = None, case_ref: str = "") -> dict[str, Any]:
    """``emergency.find_affected``: {"<customer id>": {customer_id, name, phone, products}}.

    Every given criterion must hold (a recall of batch B of model M in region R); at least
    one must be given, so an empty scope never notifies every customer. Phones are masked:
    the case data is seen by many, and notices look the contact up by customer id."""
    models, batch_list, region_list = _clean(product_models), _clean(batches), _clean(regions)
    if not (models or batch_list or region_list):
        raise InvalidInput("the emergency scope is empty", [{
            "field": "product_models/batches/regions", "message": "name at least one product model, batch or region"}])
    q = (select(Customer.id, Customer.name, Customer.phone, CustomerProduct.model, CustomerProduct.serial,
                CustomerProduct.batch, CustomerProduct.region)
         .join(CustomerProduct, CustomerProduct.customer_id == Customer.id).order_by(Customer.id, CustomerProduct.id))
    if models:
        q = q.where(CustomerProduct.model.in_(models))
    if batch_list:
        q = q.where(CustomerProduct.batch.in_(batch_list))
    if region_list:  # "上海" covers products registered in "上海市浦东新区"
        q = q.where(or_(*(CustomerProduct.region.startswith(r, autoescape=True) for r in region_list)))
    affected: dict[str, Any] = {}
    for cid, name, phone, model, serial, batch, region in ctx.session.execute(q):
        entry = affected.setdefault(str(cid), {"customer_id": cid, "name": name, "phone": mask_phone(phone),
                                               "products": []})
        entry["products"].append({"model": model, "serial": serial, "batch": batch, "region": region})
    return affected
