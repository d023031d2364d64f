"""The generic actor runtime: bounded mailboxes and OTP-style supervisors (no chat here)."""

from __future__ import annotations

from actors.runtime.mailbox import Mailbox, MailboxClosed, MailboxError, MailboxFull
from actors.runtime.supervisor import (
    ChildAlreadyStarted,
    ChildHandle,
    ChildNotFound,
    ChildSpec,
    ChildTemplate,
    ExitReason,
    Restart,
    RestartIntensityExceeded,
    Supervisor,
    SupervisorClosed,
    SupervisorError,
    open_supervisor,
)

__all__ = [
    "ChildAlreadyStarted",
    "ChildHandle",
    "ChildNotFound",
    "ChildSpec",
    "ChildTemplate",
    "ExitReason",
    "Mailbox",
    "MailboxClosed",
    "MailboxError",
    "MailboxFull",
    "Restart",
    "RestartIntensityExceeded",
    "Supervisor",
    "SupervisorClosed",
    "SupervisorError",
    "open_supervisor",
]
