"""The stand-in's platform: vLLM settles it lazily, from the version of its installed distribution."""

from types import SimpleNamespace

current_platform = SimpleNamespace(device_type="cpu")
