"""The core layer: method registry and parameters, validators, the patch record, rope setup, planning.

Pure functions of configs and values: nothing here loads a model or writes a file.
"""
