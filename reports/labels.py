"""Names of the KPIs and report words in Simplified Chinese and English, and value formats."""

from __future__ import annotations

from typing import Any

# key -> (Chinese, English, format): pct = a rate, sec = seconds shown as minutes, hours, score
KPIS: dict[str, tuple[str, str, str]] = {
    "satisfaction": ("客户满意度", "Customer satisfaction", "pct"),
    "complaint_rate": ("客户投诉率", "Complaint rate", "pct"),
    "first_response_time": ("咨询响应时间", "Consultation response time", "sec"),
    "feedback_48h_rate": ("48小时反馈率", "48 h feedback rate", "pct"),
    "repair_timeliness_rate": ("维修及时率", "Repair timeliness rate", "pct"),
    "first_visit_fix_rate": ("一次修复率", "First-visit fix rate", "pct"),
    "survey_response_rate": ("回访问卷回复率", "Survey response rate", "pct"),
    "complaint_satisfaction": ("投诉处理满意率", "Complaint-handling satisfaction", "pct"),
    "major_complaints_48h_rate": ("重大投诉48小时解决率", "Major complaints resolved in 48 h", "pct"),
    "compliance_rate": ("服务规范执行率", "Service-standard compliance rate", "pct"),
    "resolution_rate": ("问题解决率", "Resolution rate", "pct"),
    "sla_compliance": ("服务时限达成率", "SLA compliance", "pct"),
    "technician_certified_rate": ("技师持证上岗率", "Technicians certified", "pct"),
    "technician_training_hours": ("技师年度培训学时", "Technician training hours", "hours"),
}

PROCEDURES: dict[str, tuple[str, str]] = {
    "inquiry": ("咨询", "Inquiry"), "complaint": ("投诉", "Complaint"), "dispatch": ("维修派工", "Repair dispatch"),
    "installation": ("配送安装", "Installation"), "emergency": ("应急处理", "Emergency response"),
    "spot_check": ("服务规范抽查", "Spot check"),
}

WORDS: dict[str, tuple[str, str]] = {
    "monthly": ("月度服务报告", "Monthly service report"),
    "quarterly": ("季度服务考核", "Quarterly service evaluation"),
    "kpi": ("指标", "KPI"), "value": ("实际值", "Actual"), "numerator": ("分子", "Numerator"),
    "denominator": ("分母", "Denominator"), "target": ("目标", "Target"), "met": ("达标", "Met"),
    "yes": ("达标", "met"), "no": ("未达标", "missed"), "na": ("—", "—"), "true": ("是", "yes"),
    "false": ("否", "no"),
    "policy": ("时限策略", "SLA policy"), "due": ("到期数", "Due"), "kept": ("按时数", "Met"),
    "rate": ("达成率", "Rate"), "person": ("人员", "Staff"), "team": ("班组", "Team"),
    "visits": ("上门次数", "Visits"), "first_visit_fix": ("一次修复率", "First-visit fix"),
    "timeliness": ("及时率", "Timeliness"), "rating": ("平均评分", "Mean rating"),
    "certified": ("持证", "Certified"), "training_hours": ("培训学时", "Training hours"),
    "procedure": ("流程", "Procedure"), "served": ("受理客户数", "Customers served"),
    "closed": ("结案数", "Cases closed"), "period": ("统计期间", "Period"), "filters": ("筛选", "Filters"),
    "all": ("全部", "All"), "sla": ("服务时限（按策略）", "SLA compliance per policy"),
    "technicians": ("技师", "Technicians"), "by_procedure": ("按流程", "By procedure"),
    "staff": ("人员考核", "Staff evaluation"), "quarter": ("季度", "Quarter"),
    "first_reply_mean": ("平均首次响应", "Mean first response"), "feedback": ("48小时反馈率", "48 h feedback"),
    "satisfaction": ("满意度", "Satisfaction"), "compliance": ("规范执行率", "Compliance"),
    "sla_rate": ("时限达成率", "SLA compliance"), "generated": ("生成时间", "Generated"),
    "reason": ("说明", "Note"), "p90": ("90%分位", "90th percentile"), "mean": ("平均", "Mean"),
}


def both(pair: tuple[str, str]) -> str:
    return f"{pair[0]} {pair[1]}"


def kpi_name(key: str, lang: str | None = None) -> str:
    zh, en, _ = KPIS.get(key, (key, key, "pct"))
    return zh if lang == "zh" else en if lang == "en" else f"{zh} {en}"


def word(key: str, lang: str | None = None) -> str:
    zh, en = WORDS.get(key, (key, key))
    return zh if lang == "zh" or zh == en else en if lang == "en" else f"{zh} {en}"


def procedure_name(key: str | None, lang: str | None = None) -> str:
    if not key:
        return word("all", lang)
    zh, en = PROCEDURES.get(key, (key, key))
    return zh if lang == "zh" else en if lang == "en" else f"{zh} {en}"


def fmt_value(value: Any, kind: str) -> str:
    """A KPI value for people: 87.5 %, 42.0 min, 41.5 h, 4.20."""
    if value is None:
        return "—"
    if kind == "pct":
        return f"{value * 100:.1f} %"
    if kind == "sec":
        return f"{value / 60:.1f} min"
    if kind == "hours":
        return f"{value:.1f} h"
    return f"{value:.2f}"


def fmt_target(key: str, target: float | None) -> str:
    if target is None:
        return "—"
    kind = KPIS.get(key, ("", "", "pct"))[2]
    sign = "≤" if key == "first_response_time" else "≥"
    return f"{sign} {fmt_value(target, kind)}"
