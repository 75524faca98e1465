"""Stock arrivals (备件到货): open procurement requests with a button to book their goods in,
which lets the waiting repair or installation case move on; recent arrivals below."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, flash, redirect, render_template, url_for
from flask_babel import gettext as _
from werkzeug.wrappers import Response

from engine import Conflict, InvalidInput

from ..api_stock import book_arrival, list_requests, may_book_stock, may_read_stock
from .common import actor, nav_actor, require, staff_page

stock = Blueprint("stock", __name__)

RECENT = 20  # received requests shown under the open ones


@stock.app_context_processor
def stock_nav() -> dict[str, Any]:
    return {"may_read_stock": may_read_stock(nav_actor())}


@stock.get("/stock")
@staff_page
def index() -> str:
    me = actor()
    require(may_read_stock(me))
    return render_template("stock.html", open_requests=list_requests("open", 500),
                           received=list_requests("received", RECENT), may_book=may_book_stock(me))


@stock.post("/stock/<int:request_id>/receive")
@staff_page
def receive(request_id: int) -> Response:
    me = actor()
    require(may_book_stock(me))
    try:
        done = book_arrival(request_id, me)
    except (Conflict, InvalidInput) as exc:  # booked meanwhile by someone else: say so on the list
        flash(_("Nothing was booked: %(reason)s", reason=exc.message), "error")
        return redirect(url_for("stock.index"))
    if done["delivered_to"]:
        flash(_("Arrival of %(no)s booked into stock; case %(ref)s continues.", no=done["request_no"],
                ref=done["case_ref"]), "success")
    elif done["case_ref"]:  # e.g. the case was cancelled meanwhile: the goods are stock all the same
        flash(_("Arrival of %(no)s booked into stock; no case was waiting for it.", no=done["request_no"]),
              "info")
    else:
        flash(_("Arrival of %(no)s booked into stock.", no=done["request_no"]), "success")
    return redirect(url_for("stock.index"))
