"""KPI reports: facts projected from case history into an indexed table, and the KPIs of the
specification computed over it in SQL (monthly report, quarterly evaluation, dashboard)."""
