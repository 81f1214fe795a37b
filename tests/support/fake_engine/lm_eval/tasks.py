"""The stand-in's TaskManager: the tasks are the YAML files of the include path."""

import os


class TaskManager:
    def __init__(self, include_path, include_defaults, metadata):
        self.metadata = metadata
        self.all_tasks = [name[: -len(".yaml")] for name in os.listdir(include_path) if name.endswith(".yaml")]
