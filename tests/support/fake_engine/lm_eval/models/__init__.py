"""The stand-in's models package."""
