"""A generic BPMN runtime on SpiffWorkflow: deployments, durable cases, one door for changes."""

from .db import Database
from .errors import (
    Conflict,
    DeploymentInvalid,
    EngineError,
    Forbidden,
    FormInvalid,
    InvalidInput,
    NotFound,
    ScriptError,
    Unauthenticated,
    Unavailable,
)
from .identity import SYSTEM, Actor
from .services import HandlerRegistry, ServiceContext
from .workflow_engine import WorkflowEngine

__all__ = [
    "Actor", "Conflict", "Database", "DeploymentInvalid", "EngineError", "Forbidden", "FormInvalid",
    "HandlerRegistry", "InvalidInput", "NotFound", "ScriptError", "ServiceContext", "SYSTEM",
    "Unauthenticated", "Unavailable", "WorkflowEngine",
]
