"""Where finished profiles go: receivers, the fan-out to them, the file sink and the push client."""

from agent.write.fanout import Fanout
from agent.write.files import FileReceiver
from agent.write.profile import LabeledProfile, Receiver
from agent.write.pyroscope import PyroscopeWrite, PyroscopeWriteArguments

__all__ = [
    "Fanout",
    "FileReceiver",
    "LabeledProfile",
    "PyroscopeWrite",
    "PyroscopeWriteArguments",
    "Receiver",
]
