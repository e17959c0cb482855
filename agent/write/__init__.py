"""Where finished profiles go: receivers, the fan-out to them, and the file sink."""

from agent.write.fanout import Fanout
from agent.write.files import FileReceiver
from agent.write.profile import LabeledProfile, Receiver
from agent.write.pyroscope import PyroscopeWriteArguments

__all__ = ["Fanout", "FileReceiver", "LabeledProfile", "PyroscopeWriteArguments", "Receiver"]
