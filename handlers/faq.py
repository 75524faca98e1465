"""FAQ auto-reply (智能客服, seed 003): match a customer's question against the FAQ entries.

Chinese has no spaces, so text is cut into character bigrams (plus single characters that
carry meaning); Latin text into lower-cased words. Entries and the question become TF-IDF
vectors and the best cosine similarity wins. An answer goes out automatically only when the
score reaches the confidence threshold and clearly beats the runner-up; otherwise the agent
gets the best candidate as a suggestion.
"""

from __future__ import annotations

import math
import os
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine import ServiceContext

from .models import FaqEntry

DEFAULT_THRESHOLD = float(os.environ.get("AFTERCARE_FAQ_THRESHOLD", "0.45"))
MIN_MARGIN = 0.05  # a near tie between two different answers is not a confident answer
KEYWORD_WEIGHT = 2

_CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_RUNS = re.compile(rf"[{_CJK}]+|[a-z0-9]+(?:[-.][a-z0-9]+)*")
# Function characters and question phrases that say nothing about the topic.
_STOP_CHARS = set("的了吗呢吧啊呀是我你您他她它们在有和与及或就都也还要会能请问怎么什么如何为这那个一下些")
_STOP_BIGRAMS = {"怎么", "什么", "如何", "请问", "可以", "是否", "一下", "我的", "您好", "你好", "为什", "么办",
                 "怎样", "哪里", "多少", "有没", "没有", "需要", "能不", "不能", "是不", "不是"}
_STOP_WORDS = {
    "a", "an", "the", "is", "are", "was", "be", "do", "does", "did", "i", "my", "me", "you", "your", "it", "its",
    "to", "of", "in", "on", "for", "and", "or", "can", "how", "what", "why", "when", "where", "which", "there",
    "please", "with", "this", "that", "have", "has", "will", "would", "should", "could", "about", "get", "any",
}


def tokens(text: str) -> list[str]:
    text = unicodedata.normalize("NFKC", text or "").lower()
    out: list[str] = []
    for run in _RUNS.finditer(text):
        s = run.group()
        if re.match(rf"[{_CJK}]", s):
            out.extend(c for c in s if c not in _STOP_CHARS)
            out.extend(b for b in (s[i:i + 2] for i in range(len(s) - 1)) if b not in _STOP_BIGRAMS)
        elif s not in _STOP_WORDS and (len(s) > 1 or s.isdigit()):
            out.append(s[:-1] if len(s) > 3 and s.endswith("s") and not s.endswith("ss") else s)
    return out


@dataclass
class Match:
    entry: FaqEntry
    score: float


def _vector(counts: Counter[str], idf: dict[str, float]) -> dict[str, float]:
    vec = {t: (1 + math.log(n)) * idf.get(t, 0.0) for t, n in counts.items()}
    norm = math.sqrt(sum(v * v for v in vec.values()))
    return {t: v / norm for t, v in vec.items()} if norm else {}


def rank(entries: list[FaqEntry], question: str, product_model: str = "") -> list[Match]:
    """Entries ranked by similarity to ``question``; entries for another product model are left out."""
    model = (product_model or "").strip().lower()
    usable = [e for e in entries if not e.product_model or not model or e.product_model.lower() == model]
    if not usable:
        return []
    docs = []
    for e in usable:
        counts = Counter(tokens(e.question))
        for t in tokens(e.keywords.replace(",", " ").replace("，", " ").replace(";", " ")):
            counts[t] += KEYWORD_WEIGHT
        docs.append(counts)
    df: Counter[str] = Counter()
    for counts in docs:
        df.update(counts.keys())
    n = len(docs)
    idf = {t: math.log((n + 1) / (d + 1)) + 1.0 for t, d in df.items()}
    query = _vector(Counter(tokens(question)), idf)
    if not query:
        return []
    matches = []
    for e, counts in zip(usable, docs, strict=True):
        doc = _vector(counts, idf)
        score = sum(w * doc.get(t, 0.0) for t, w in query.items())
        if e.product_model and model:  # an answer written for exactly this model is the better one
            score = min(1.0, score * 1.1)
        matches.append(Match(e, score))
    matches.sort(key=lambda m: (-m.score, m.entry.id))
    return matches


def active_entries(session: Session) -> list[FaqEntry]:
    return list(session.scalars(select(FaqEntry).where(FaqEntry.active.is_(True)).order_by(FaqEntry.id)))


def answer(session: Session, question: str, product_model: str = "",
           threshold: float | None = None) -> dict[str, Any]:
    threshold = DEFAULT_THRESHOLD if threshold is None else float(threshold)
    ranked = rank(active_entries(session), question, product_model)
    if not ranked:
        return {"confident": False, "answer": "", "faq_id": None, "score": 0.0, "threshold": threshold}
    best = ranked[0]
    runner_up = next((m for m in ranked[1:] if m.entry.answer != best.entry.answer), None)
    clear = runner_up is None or best.score - runner_up.score >= MIN_MARGIN
    confident = best.score >= threshold and clear
    result: dict[str, Any] = {
        "confident": confident, "answer": best.entry.answer if confident else "",
        "faq_id": best.entry.id if confident else None, "score": round(best.score, 3), "threshold": threshold,
    }
    if confident:
        result["matched_question"] = best.entry.question
    else:  # the agent sees the best candidate beside the question
        result["suggestion"] = {"faq_id": best.entry.id, "question": best.entry.question,
                                "answer": best.entry.answer, "score": round(best.score, 3)}
    return result


def auto_reply(ctx: ServiceContext, question: str = "", product_model: str = "", channel: str = "",
               threshold: float | None = None) -> dict[str, Any]:
    """``faq.auto_reply``: {confident, answer, faq_id, score}."""
    return answer(ctx.session, str(question or ""), str(product_model or ""), threshold)
