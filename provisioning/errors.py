"""The one error provisioning raises: a step that could not be done, with a
message that says what failed and what to do."""
from __future__ import annotations

from core.errors import NommerError


class ProvisioningError(NommerError):
    """A deploy or build step failed; the message is meant for the operator."""
