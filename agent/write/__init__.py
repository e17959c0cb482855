"""Where finished profiles go: receivers, the fan-out to them, the file sink and the push client.

The push client (``agent.write.pyroscope``, over httpx) is imported from its module, only by
the configurations that use ``pyroscope.write``.
"""

from agent.write.fanout import Fanout
from agent.write.files import FileReceiver
from agent.write.profile import LabeledProfile, Receiver
from agent.write.recent import RECENT_PROFILES_KEY, RecentProfiles, target_id

__all__ = [
    "Fanout",
    "FileReceiver",
    "LabeledProfile",
    "RECENT_PROFILES_KEY",
    "Receiver",
    "RecentProfiles",
    "target_id",
]
