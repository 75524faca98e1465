"""Audit: tamper-evident history, replay with verification, time travel, export and access records.

- ``clock``: the command's clock, seen by SpiffWorkflow's timers, so a replay decides timers
  exactly as the original command did.
- ``recorded``: results of expression functions (``now()``, SLA due dates, look-ups) recorded per
  command and answered from the record during a replay.
- ``chain``: verification of the per-case hash chains and of the global chain that seals all
  events (and access records) in the order they were sealed.
- ``replay``: re-execution of a case from its definition version and recorded inputs, compared
  with the stored state; the same machinery answers "the case as it stood after event N".
- ``bundle``: self-contained export of a case, verified offline without a database.
- ``access``: who viewed unmasked personal data, exported, or was denied.

Submodules are imported explicitly (``from engine.audit import chain``); this package imports
nothing itself because the runtime imports ``clock`` and ``recorded`` while it is being loaded.
"""
