"""Hands each profile to every receiver; one failing receiver costs the others nothing."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from agent.write.profile import LabeledProfile, Receiver

__all__ = ["Fanout"]

log = logging.getLogger(__name__)


class Fanout:
    def __init__(self, receivers: Sequence[Receiver]) -> None:
        self.receivers = list(receivers)
        self.failures = 0

    def append(self, profile: LabeledProfile) -> None:
        for receiver in self.receivers:
            try:
                receiver.append(profile)
            except Exception:  # a receiver's bug must not lose the other receivers' data
                self.failures += 1
                log.exception("receiver %r failed to take a profile", receiver)
